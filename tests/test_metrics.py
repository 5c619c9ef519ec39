"""Segment metrics (docs/method.md step 6) on a hand-computed example."""

import math

import numpy as np
import pytest

from segsft.method.metrics import segment_metrics


def test_strength_and_consistency_by_hand():
    # a = [3, -4, 0, 0, 0]: ||a|| = 5. Segments: [0,2) and [2,5) (all zero).
    rows = segment_metrics(np.array([3.0, -4.0, 0.0, 0.0, 0.0]), [(0, 2), (2, 5)])
    s0, s1 = rows
    assert s0["n_tokens"] == 2
    assert s0["attr_sum"] == -1.0 and s0["attr_abs_sum"] == 7.0
    assert s0["strength"] == pytest.approx((3 / 5 + 4 / 5) / math.sqrt(2))
    assert s0["consistency"] == pytest.approx(1 / 7)
    assert s1["strength"] == 0.0 and s1["consistency"] is None
    assert s0["token_attr"].dtype == np.float32 and list(s0["token_attr"]) == [3.0, -4.0]


def test_prompt_tokens_count_in_the_norm_only():
    # Position 0 (prompt) is no segment but still enters the L2 norm.
    rows = segment_metrics(np.array([6.0, 8.0]), [(1, 2)])
    assert rows[0]["strength"] == pytest.approx(0.8)
    assert rows[0]["consistency"] == 1.0


def test_empty_segment_has_zero_strength():
    rows = segment_metrics(np.array([1.0, 2.0]), [(0, 2), (2, 2)])
    assert rows[1]["n_tokens"] == 0 and rows[1]["strength"] == 0.0 and rows[1]["consistency"] is None
