"""bench/convergence_study.py: the study behind the adaptive rule's defaults keeps its entry points
and compares the product's own margins with the product's code, not a copy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_the_study_script_parses_its_arguments_and_has_its_steps():
    out = subprocess.run([sys.executable, str(REPO / "bench" / "convergence_study.py"), "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "compute" in out.stdout and "analyze" in out.stdout


def test_the_studys_margins_are_the_products_and_rss_lies_between_own_and_adversarial():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs

    from segsft.method.adaptive import Estimate, StopTest
    from segsft.method.metrics import SegmentRule
    from segsft.method.selection_config import SelectConfig

    rule = SegmentRule([(0, 1), (1, 2), (2, 3)], SelectConfig(always_keep=(), max_consistency=None))
    rule.metrics = lambda a: (np.asarray(a, dtype=np.float64), np.full(3, 0.5))
    hist = [Estimate(9, np.array([0.48, 0.33, 0.22]), 0.01, 0.01), Estimate(18, np.array([0.45, 0.30, 0.25]), 0.01, 0.01)]
    flags = {m: cs.MarginVariant(1.0, 1.0, rule, margin=m).verdict(hist).borderline.tolist()
             for m in ("own", "rss", "adversarial")}
    assert flags["own"] == StopTest(1.0, 1.0, rule, margin="own").verdict(hist).borderline.tolist() == [False] * 3
    assert flags["adversarial"] == StopTest(1.0, 1.0, rule).verdict(hist).borderline.tolist() == [False, False, True]
    # rss moves the others by sqrt(sum e^2) / sum e of their errors: less than all at once, more than none.
    assert all(o <= r <= a for o, r, a in zip(flags["own"], flags["rss"], flags["adversarial"]))
