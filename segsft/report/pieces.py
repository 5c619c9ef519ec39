"""Cutting a segment's text into the pieces the page colours: pure, no HTML."""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Piece:
    start: int  # into the trace
    end: int
    value: float | None  # the attribution of the token holding `start` (None: no token)
    keyword: bool  # inside the segment's keyword
    label_before: bool  # the segment's label goes right before this piece


def cut(cs: int, ce: int, keyword: tuple[int, int] | None, token_starts: Sequence[int] | None,
        token_values: Sequence[float] | None, label_at: int) -> list[Piece]:
    """Pieces of [cs, ce), cut at every token start, the keyword's bounds and `label_at`; they
    tile the segment exactly. Tokens sharing a first character (bytes of one character) are one
    piece, valued at their sum; a piece before the first token start has no value."""
    cuts = {cs, ce, label_at}
    if keyword:
        cuts |= set(keyword)
    value: dict[int, float] = {}
    if token_starts is not None:
        for s, v in zip(token_starts, token_values or ()):
            value[int(s)] = value.get(int(s), 0.0) + float(v)
        cuts |= set(value)
    starts = sorted(value)
    bounds = sorted(c for c in cuts if cs <= c <= ce)
    out = []
    for a, b in zip(bounds, bounds[1:]):
        i = bisect.bisect_right(starts, a) - 1
        out.append(Piece(a, b, value[starts[i]] if i >= 0 else None, bool(keyword and keyword[0] <= a < keyword[1]),
                         a == label_at))
    return out
