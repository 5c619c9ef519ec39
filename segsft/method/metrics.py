"""Segment metrics of DESIGN step 6 from the raw per-token attributions."""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np


def segment_decider(segment_tokens: Sequence[tuple[int, int]], select_cfg: Any, train_tokens: int | None = None
                    ) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """token_attr -> (train decision per segment, strength per segment): the select stage's own
    rule (`segsft.method.rule.decide`) on one sample, as the adaptive rule's stop test needs it."""
    from segsft.method.rule import decide

    def fn(token_attr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seg = segment_metrics(token_attr, segment_tokens)
        strength = np.array([m["strength"] for m in seg])
        return decide(strength, [m["consistency"] for m in seg], select_cfg, train_tokens), strength

    return fn


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
