"""Labels of one training sequence: which tokens carry loss (docs/method.md step 8).

Pure array math, no model or launcher: the one place that decides a token's label.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from segsft.method.text import token_spans
from segsft.schemas import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "label_tokens", "n_learned", "truncate"]


def label_tokens(
    input_ids: np.ndarray,
    n_prompt: int,
    trace_starts: np.ndarray,
    train_spans: Sequence[tuple[int, int]],
) -> np.ndarray:
    """Labels for `input_ids` = prompt tokens + trace tokens.

    `trace_starts[i]` is the first character (in the trace) of trace token i, i.e. of
    sequence token `n_prompt + i`. A trace token is learned (label = its id) when its
    first character lies in one of `train_spans` (character spans `[start, end)` of the
    trace whose mask says `train`); every other token, the prompt included, gets
    IGNORE_INDEX and keeps its place in the input.
    """
    input_ids = np.asarray(input_ids, dtype=np.int64)
    trace_starts = np.asarray(trace_starts, dtype=np.int64)
    if input_ids.shape[0] != n_prompt + trace_starts.shape[0]:
        raise ValueError(
            f"{input_ids.shape[0]} ids but {n_prompt} prompt + {trace_starts.shape[0]} trace tokens"
        )
    learned = np.zeros(input_ids.shape[0], dtype=bool)
    spans = [(int(a), int(b)) for a, b in train_spans if b > a]
    for lo, hi in token_spans(trace_starts, spans) if spans else []:
        learned[n_prompt + lo : n_prompt + hi] = True
    return np.where(learned, input_ids, IGNORE_INDEX)


def truncate(input_ids: np.ndarray, labels: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first `max_length` positions of both (0 = no limit): labels stay aligned."""
    if max_length and input_ids.shape[0] > max_length:
        return input_ids[:max_length], labels[:max_length]
    return input_ids, labels


def n_learned(labels: np.ndarray) -> int:
    """Tokens that carry loss. The first position never does (nothing predicts it)."""
    return int((np.asarray(labels)[1:] != IGNORE_INDEX).sum())
