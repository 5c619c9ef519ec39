"""Traces from ../shared/data cut to a token budget, the same way for every benchmark."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from segsft.method.text import TraceSequence, build_sequence

import os

# $SEGSFT_TRACES: a copy carried to a machine where ../shared is not beside the repo.
DATA = Path(os.environ.get("SEGSFT_TRACES") or
            Path(__file__).resolve().parents[2] / "shared" / "data" / "r1-distill-qwen-7b-aime24.jsonl")


def load_rows() -> list[dict]:
    if not DATA.is_file():
        raise SystemExit(f"{DATA} is absent: the benchmarks read the shared traces beside the repo")
    return [json.loads(x) for x in DATA.read_text().splitlines()]


def cut_sequence(tok: Any, row: dict, n_tokens: int, pattern: re.Pattern[str]) -> tuple[str, TraceSequence]:
    """The trace cut at a token boundary so that prompt + trace + answer suffix fit
    `n_tokens` (within a few tokens); the answer suffix stays whole."""
    full = build_sequence(tok, row["question"], row["solution"], pattern, row["answer"])
    over = len(full.input_ids) - n_tokens
    if over <= 0:
        return row["solution"], full
    enc = tok(row["solution"], add_special_tokens=False, return_offsets_mapping=True)
    keep = max(1, len(enc["input_ids"]) - over - 8)
    cut = row["solution"][: enc["offset_mapping"][keep][0]]
    return cut, build_sequence(tok, row["question"], cut, pattern, row["answer"])


def excerpt_sequence(tok: Any, row: dict, n_tokens: int, pattern: re.Pattern[str], seg_tokens: int = 32) -> tuple[str, TraceSequence]:
    """A short trace that keeps the segment structure: the first `seg_tokens` tokens of each
    segment, segments in order, as many as fit `n_tokens`. (Cutting a long trace at its
    start keeps only its first one or two segments, too few to compare selections.)"""
    from segsft.method.text import split_segments

    text = row["solution"]
    pieces: list[str] = []
    seq = None
    for a, b in split_segments(text, pattern):
        enc = tok(text[a:b], add_special_tokens=False, return_offsets_mapping=True)
        end = enc["offset_mapping"][seg_tokens][0] if len(enc["input_ids"]) > seg_tokens else b - a
        trial = build_sequence(tok, row["question"], "".join(pieces) + text[a : a + end], pattern, row["answer"])
        if len(trial.input_ids) > n_tokens and pieces:
            break
        pieces.append(text[a : a + end])
        seq = trial
    return "".join(pieces), seq


def window_rows(tok: Any, rows: list[dict], pattern: re.Pattern[str], lo: int = 200, hi: int = 400,
                min_segments: int = 5) -> list[dict]:
    """Each trace cut at segment boundaries on both sides: the run of consecutive whole
    segments with the most segments (at least `min_segments`; the earliest of equals) whose sequence (prompt + window + answer
    suffix) has `lo`..`hi` tokens. Real contiguous text, never stitched excerpts. (No
    trace's segment 0 alone fits 400 SmolLM2 tokens, so a prefix cannot be used.) Rows
    with no such window are left out; `window` records the segment range."""
    from segsft.method.text import split_segments

    out = []
    for row in rows:
        text = row["solution"]
        spans = split_segments(text, pattern)
        base = len(build_sequence(tok, row["question"], "", pattern, row["answer"]).input_ids)
        counts = [len(tok(text[a:b], add_special_tokens=False)["input_ids"]) for a, b in spans]
        found = None
        for i in range(len(spans)):
            total = base
            for j in range(i, len(spans)):
                total += counts[j]
                if total > hi:
                    break
                if j - i + 1 >= min_segments and total >= lo and (not found or j + 1 - i > found[1] - found[0]):
                    found = (i, j + 1)
        if not found:
            continue
        i, j = found
        cut = text[spans[i][0] : spans[j - 1][1]]
        seq = build_sequence(tok, row["question"], cut, pattern, row["answer"])
        if not lo <= len(seq.input_ids) <= hi + 8:
            continue
        out.append({**row, "solution": cut, "window": [i, j], "n_tokens": len(seq.input_ids)})
    return out
