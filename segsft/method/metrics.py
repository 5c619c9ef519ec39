"""Segment metrics of docs/method.md step 6 from the raw per-token attributions."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


class SegmentRule:
    """The select stage's own rule (`segsft.method.rule`) on one sample, as the adaptive rule's stop
    test needs it: token_attr -> (train decision, strength) per segment, and the decisions of
    many variants of the sample's strengths and consistencies at once (its error margins)."""

    def __init__(self, segment_tokens: Sequence[tuple[int, int]], select_cfg: Any, train_tokens: int | None = None):
        self.segment_tokens, self.select_cfg, self.train_tokens = list(segment_tokens), select_cfg, train_tokens
        bounds = np.array(self.segment_tokens, dtype=np.int64).reshape(-1, 2)
        self._start, self._end = bounds[:, 0], bounds[:, 1]
        self._n = np.maximum(self._end - self._start, 0)

    def metrics(self, token_attr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(strength, consistency) per segment, as `segment_metrics` defines them (NaN = null
        consistency), vectorised: the stop test asks for them every round."""
        a = np.asarray(token_attr, dtype=np.float64)
        cs = np.concatenate([[0.0], np.cumsum(a)])
        cabs = np.concatenate([[0.0], np.cumsum(np.abs(a))])
        s = cs[self._end] - cs[self._start]
        s_abs = np.maximum(cabs[self._end] - cabs[self._start], 0.0)
        norm = float(np.linalg.norm(a))
        with np.errstate(divide="ignore", invalid="ignore"):
            strength = np.where((self._n > 0) & (norm > 0), s_abs / norm / np.sqrt(np.maximum(self._n, 1)), 0.0)
            consistency = np.where(s_abs > 0, np.abs(s) / s_abs, np.nan)
        return strength, consistency

    def decide(self, strength: np.ndarray, consistency: np.ndarray) -> np.ndarray:
        """[S, n] variants -> [S, n] train decisions (one query)."""
        from segsft.method.rule import decide_many

        return decide_many(strength, consistency, self.select_cfg, self.train_tokens)

    def __call__(self, token_attr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        strength, consistency = self.metrics(token_attr)
        return self.decide(strength[None, :], consistency[None, :])[0], strength


def segment_metrics(token_attr: np.ndarray, segment_tokens: Sequence[tuple[int, int]]) -> list[dict]:
    """Per segment: raw sums, strength and consistency.

    `token_attr` holds the raw a_t of the whole sequence; strength uses a_t divided by
    the L2 norm over the whole sequence, consistency is scale-free. A segment with no
    token has strength 0; consistency is None whenever sum |a_t| is 0.
    """
    a = np.asarray(token_attr, dtype=np.float64)
    norm = float(np.linalg.norm(a))
    out = []
    for start, end in segment_tokens:
        seg = a[start:end]
        n = end - start
        s = float(seg.sum())
        s_abs = float(np.abs(seg).sum())
        strength = (s_abs / norm) / math.sqrt(n) if n > 0 and norm > 0 else 0.0
        consistency = abs(s) / s_abs if s_abs > 0 else None
        out.append(
            {
                "n_tokens": n,
                "attr_sum": s,
                "attr_abs_sum": s_abs,
                "strength": strength,
                "consistency": consistency,
                "token_attr": seg.astype(np.float32),
            }
        )
    return out
