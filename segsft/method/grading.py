"""Grading model outputs against ground truth with math-verify (never a hand-written comparer).

The prediction is the content of the last `\\boxed{}` after `</think>`; without `</think>`, or
without a box after it, the whole output is searched (math-verify's own extraction: the last
boxed or LaTeX expression). Multiple-choice problems (a `choices` field, or a letter answer A-E)
are graded on the letter. Every graded output keeps its prediction and its verdict:
match, mismatch, no_answer (nothing to extract), truncated (nothing to extract and the output
was cut at max_new_tokens).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from segsft.method.text import boxed_span

THINK_END = "</think>"
_PERCENT = re.compile(r"\\?%")
_LETTER = re.compile(r"^\(?([A-Ea-e])\)?[.:]?$")
_LETTER_IN_TEXT = re.compile(r"(?:answer(?: is)?|\\boxed\{)\s*:?\s*\(?([A-E])\)?\b")


@dataclass(frozen=True)
class Grade:
    pred: str | None
    correct: bool
    verdict: str  # match | mismatch | no_answer | truncated


def final_part(output: str) -> str:
    """The text after the last `</think>` (the whole output when there is none)."""
    i = output.rfind(THINK_END)
    return output[i + len(THINK_END):] if i >= 0 else output


def last_boxed(text: str) -> str | None:
    try:
        a, b = boxed_span(text)
    except ValueError:
        return None
    return text[a:b].strip()


def is_choice(answer: str, choices: Sequence[str] | None = None) -> bool:
    return bool(choices) or bool(_LETTER.match(answer.strip()))


def _letter(text: str | None) -> str | None:
    if not text:
        return None
    m = _LETTER.match(text.strip())
    if m:
        return m.group(1).upper()
    m = _LETTER_IN_TEXT.search(text)
    return m.group(1).upper() if m else None


def _verify(gold: str, pred_text: str) -> tuple[str | None, bool]:
    """math-verify on the gold answer and the predicted text; (the extracted prediction, match)."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    configs = [LatexExtractionConfig(), ExprExtractionConfig()]
    gold_parsed = parse(f"${gold}$", extraction_config=configs)
    if not gold_parsed:
        gold_parsed = parse(gold, extraction_config=configs)
    pred_parsed = parse(pred_text, extraction_config=configs)
    if not pred_parsed:
        return None, False
    shown = pred_parsed[1] if len(pred_parsed) > 1 and isinstance(pred_parsed[1], str) else str(pred_parsed[0])
    return shown, bool(gold_parsed) and bool(verify(gold_parsed, pred_parsed))


def grade(output: str, answer: Any, finish_reason: str = "stop", choices: Sequence[str] | None = None) -> Grade:
    """Grade one output (see the module doc)."""
    answer = str(answer).strip()
    boxed = last_boxed(final_part(output)) if THINK_END in output else None
    if boxed is None:
        boxed = last_boxed(output)
    if is_choice(answer, choices):
        gold = _letter(answer) or answer.strip().upper()
        if choices and gold not in "ABCDE":  # the answer given as the text of a choice
            gold = next((chr(65 + i) for i, c in enumerate(choices) if str(c).strip() == answer), gold)
        pred = _letter(boxed) if boxed is not None else _letter(final_part(output)[-300:])
        if pred is None:
            return Grade(None, False, "truncated" if finish_reason == "length" else "no_answer")
        return Grade(pred, pred == gold, "match" if pred == gold else "mismatch")
    text = f"\\boxed{{{boxed}}}" if boxed is not None else output
    try:
        pred, ok = _verify(answer, text)
        if not ok and pred is not None and ("%" in answer or "%" in text):
            # "50\%" and "50" name the same answer in these benchmarks (math-verify reads % as /100).
            ok = _verify(_PERCENT.sub("", answer), _PERCENT.sub("", text))[1]
    except Exception:  # noqa: BLE001 - a pathological expression is a mismatch, not a crash of the run
        pred, ok = boxed, False
    if boxed is not None:
        pred = boxed  # show what was written, not math-verify's rendering of it
    if pred is None:
        return Grade(None, False, "truncated" if finish_reason == "length" else "no_answer")
    return Grade(pred, ok, "match" if ok else "mismatch")
