"""Text side of the method: prompt, segments, one tokenization with offsets, answer span.

Shared by attribution (docs/method.md steps 1-4) and fine-tuning (step 8) so that both stages
see exactly the same tokens and the same token-to-segment rule.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np

from segsft.config_schema import AttributeConf

PROMPT_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."

#: docs/method.md step 2, the reference's default keyword pattern.
KEYWORDS_DEFAULT = (
    r"\n\nWait|\n\nAlternatively|\n\nBut wait|\n\nBut alternatively|\n\nBut just to|"
    r"\n\nHowever|\n\nNot sure|\n\nGoing back|\n\nBacktrack|\n\nTrace back|\n\nAnother"
)
#: docs/method.md step 2, the second preset.
KEYWORDS_BROAD = (
    r"\n\nWait|\n\nAlternatively|\n\nBut|\n\nHowever|\n\nHmmm|\n\nHmm|\n\nNot sure|"
    r"\n\nGoing back|\n\nBacktrack|\n\nTrace back|\n\nAnother"
)
KEYWORD_PRESETS = {"default": KEYWORDS_DEFAULT, "broad": KEYWORDS_BROAD}

#: `{answer}` is replaced by the sample's answer (no other formatting is applied).
ANSWER_SUFFIX_DEFAULT = AttributeConf.answer_suffix  # the one default (segsft.config_schema)


def resolve_pattern(preset: str | None, pattern: str | None = None) -> re.Pattern[str]:
    """The keyword regex: an explicit `pattern` wins over a named preset."""
    if pattern:
        return re.compile(pattern)
    if preset not in KEYWORD_PRESETS:
        raise ValueError(
            f"unknown segment preset {preset!r}: use one of {sorted(KEYWORD_PRESETS)} "
            "or set attribute.segment_pattern to a regex"
        )
    return re.compile(KEYWORD_PRESETS[preset])


def split_segments(text: str, pattern: re.Pattern[str]) -> list[tuple[int, int]]:
    """Character spans of the segments of `text`, split before every keyword match.

    The keyword starts the segment that follows it. Empty segments are never produced:
    a keyword at position 0 starts segment 0, and a zero-length match is ignored.
    The spans tile the text exactly, so concatenating the segments gives it back.
    """
    cuts = [m.start() for m in pattern.finditer(text) if m.end() > m.start() and m.start() > 0]
    bounds = [0, *sorted(set(cuts)), len(text)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def user_message(question: str) -> str:
    """docs/method.md step 1: the user turn of the prompt."""
    return f"{question}{PROMPT_SUFFIX}"


def render_prompt(tokenizer: Any, question: str) -> str:
    """The chat-template rendering of the prompt, ending where the assistant starts."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "the tokenizer has no chat template; use an instruct/chat model or set "
            "tokenizer.chat_template before running the pipeline"
        )
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": user_message(question)}],
        tokenize=False,
        add_generation_prompt=True,
    )


def _braces(text: str, start: int = 0) -> "Iterator[tuple[int, int]]":
    """(position, +1 for `{` / -1 for `}`) of the unescaped braces of `text` from `start`:
    as TeX reads them, `\\{` and `\\}` are literal braces, and `\\\\` is an escaped backslash."""
    j = start
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2  # the next character is escaped (or the backslash itself is)
            continue
        if c in "{}":
            yield j, 1 if c == "{" else -1
        j += 1


def balanced(text: str) -> bool:
    """Every unescaped brace of `text` is matched (TeX's rule)."""
    depth = 0
    for _, d in _braces(text):
        depth += d
        if depth < 0:
            return False
    return depth == 0


def boxed_span(text: str) -> tuple[int, int]:
    """Character span of the content of the last `\\boxed{...}` in `text`, braces matched as
    TeX matches them (escaped braces do not count).

    Raises ValueError when there is no `\\boxed{` or its braces do not close.
    """
    start = text.rfind("\\boxed{")
    if start < 0:
        raise ValueError("no \\boxed{ in the answer suffix")
    i = start + len("\\boxed{")
    depth = 1
    for j, d in _braces(text, i):
        depth += d
        if depth == 0:
            return i, j
    raise ValueError("unbalanced braces in \\boxed{...}: the answer's braces must match")


@dataclass(frozen=True)
class Encoded:
    """One tokenization of `text` (no special tokens) with the first character of each token."""

    ids: np.ndarray  # int64 [n]
    starts: np.ndarray  # int64 [n], first character of each token
    ends: np.ndarray  # int64 [n], one past its last character


def special_texts(tokenizer: Any) -> list[str]:
    """The text of every special (control) token, e.g. `<|im_end|>`."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted({t.content for t in added.values() if getattr(t, "special", False)} | set(tokenizer.all_special_tokens))


def has_special_text(tokenizer: Any, text: str) -> bool:
    return any(s and s in text for s in special_texts(tokenizer))


def encode_with_offsets(tokenizer: Any, text: str, as_plain_text: bool = False) -> Encoded:
    """Tokenize once and keep character offsets (needs a fast tokenizer). `as_plain_text`:
    control-token text in `text` (`<|im_end|>`) is encoded as ordinary characters."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            "a fast (Rust) tokenizer is needed for character offsets; load it with use_fast=True"
        )
    extra = {"split_special_tokens": True} if as_plain_text else {}
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, **extra)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    return Encoded(
        ids=np.asarray(enc["input_ids"], dtype=np.int64),
        starts=offsets[:, 0],
        ends=offsets[:, 1],
    )


def encode_plain(tokenizer: Any, text: str) -> np.ndarray:
    return np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=np.int64)


_MARK = "\ue000segsft-question\ue000"  # private-use characters: never in a question


def encode_prompt(tokenizer: Any, question: str) -> np.ndarray:
    """docs/method.md step 1's prompt tokens. The template's own control tokens are control tokens;
    control-token text inside the question (a data row writing `<|im_end|>` to open a turn of
    its own) is encoded as plain text. A question without such text is tokenized as the whole
    rendered prompt, exactly as before."""
    rendered = render_prompt(tokenizer, question)
    if not has_special_text(tokenizer, question):
        return encode_plain(tokenizer, rendered)
    before, found, after = render_prompt(tokenizer, _MARK).partition(_MARK)
    if not found:
        raise ValueError("the chat template does not contain the user message as given; cannot encode it safely")
    plain = tokenizer(question, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    return np.concatenate([encode_plain(tokenizer, before), np.asarray(plain, dtype=np.int64), encode_plain(tokenizer, after)])


def token_spans(starts: np.ndarray, char_spans: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Token span [start, end) of each character span: a token belongs to the span
    holding its first character. `starts` must be non-decreasing (true for offsets)."""
    lo = np.searchsorted(starts, [a for a, _ in char_spans], side="left")
    hi = np.searchsorted(starts, [b for _, b in char_spans], side="left")
    return [(int(a), int(b)) for a, b in zip(lo, hi)]


def answer_token_positions(enc: Encoded, ans_start: int, ans_end: int) -> np.ndarray:
    """docs/method.md step 4: tokens wholly inside [ans_start, ans_end); if none, every token
    that overlaps it."""
    inside = (enc.starts >= ans_start) & (enc.ends <= ans_end) & (enc.ends > enc.starts)
    if not inside.any():
        inside = (enc.starts < ans_end) & (enc.ends > ans_start)
    return np.flatnonzero(inside)


@dataclass(frozen=True)
class TraceSequence:
    """The sequence of docs/method.md step 3 (or step 8 without a suffix) and its spans.

    Token indices are into the whole sequence: prompt tokens first.
    """

    input_ids: np.ndarray
    n_prompt: int
    segment_chars: list[tuple[int, int]]  # into the trace
    segment_tokens: list[tuple[int, int]]  # into the sequence
    answer_positions: np.ndarray  # into the sequence; empty without a suffix
    # First character (into trace + suffix) of each token after the prompt: token
    # n_prompt + i starts at body_starts[i]. Labels and token shading map through it.
    body_starts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def train_tokens(self) -> int:
        """Prompt + trace: the length of the training sequence (docs/method.md step 8)."""
        return self.segment_tokens[-1][1] if self.segment_tokens else self.n_prompt

    @property
    def trace_tokens(self) -> tuple[int, int]:
        """The trace's token span [start, end) in the sequence."""
        return self.n_prompt, self.train_tokens


def build_sequence(
    tokenizer: Any,
    question: str,
    solution: str,
    pattern: re.Pattern[str] | None,
    answer: str | None = None,
    answer_suffix: str = ANSWER_SUFFIX_DEFAULT,
) -> TraceSequence:
    """Prompt tokens + one offset tokenization of trace (+ answer suffix when `answer`).

    The one tokenization of the pipeline: attribution (steps 3-4), fine-tuning (step 8,
    no answer) and the report all call it. `pattern=None` keeps the trace as one segment.
    Raises ValueError when the answer span cannot be found or holds no token.
    """
    prompt_ids = encode_prompt(tokenizer, question)
    body = solution
    ans_chars = None
    if answer is not None:
        if not balanced(answer):
            raise ValueError(f"the answer {answer!r} has unbalanced braces (escape a literal brace as \\{{ or \\}}): "
                             "its \\boxed{{}} could not be matched")
        suffix = answer_suffix.replace("{answer}", answer)
        a, b = boxed_span(suffix)
        ans_chars = (len(solution) + a, len(solution) + b)
        body = solution + suffix
    enc = encode_with_offsets(tokenizer, body, as_plain_text=has_special_text(tokenizer, solution))
    seg_chars = split_segments(solution, pattern) if pattern is not None else ([(0, len(solution))] if solution else [])
    n_prompt = len(prompt_ids)
    seg_tokens = [(n_prompt + a, n_prompt + b) for a, b in token_spans(enc.starts, seg_chars)]
    positions = np.zeros(0, dtype=np.int64)
    if ans_chars is not None:
        positions = answer_token_positions(enc, *ans_chars)
        if positions.size == 0:
            raise ValueError("the answer inside \\boxed{} maps to no token")
        positions = positions + n_prompt
    return TraceSequence(
        input_ids=np.concatenate([prompt_ids, enc.ids]),
        n_prompt=n_prompt,
        segment_chars=seg_chars,
        segment_tokens=seg_tokens,
        answer_positions=positions,
        body_starts=enc.starts,
    )
