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


def test_the_studys_margins_are_the_products_and_the_old_push_margin_sees_less():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs

    from segsft.method.adaptive import Estimate, StopTest
    from segsft.method.metrics import SegmentRule
    from segsft.method.selection_config import SelectConfig

    rule = SegmentRule([(0, 1), (1, 2), (2, 3)], SelectConfig(always_keep=(), max_consistency=None))
    rule.metrics = lambda a: (np.asarray(a, dtype=np.float64), np.full(3, 0.5))
    hist = [Estimate(9, np.array([0.48, 0.33, 0.22]), 0.01, 0.01), Estimate(18, np.array([0.45, 0.30, 0.25]), 0.01, 0.01)]
    flags = {(m, e): cs.MarginVariant(1.0, 1.0, rule, margin=m, errors=e).verdict(hist).borderline.tolist()
             for m in ("own", "push", "adversarial") for e in ("share", "raw")}
    assert flags["own", "share"] == StopTest(1.0, 1.0, rule, margin="own").verdict(hist).borderline.tolist() == [False] * 3
    assert flags["adversarial", "share"] == StopTest(1.0, 1.0, rule).verdict(hist).borderline.tolist() == [False, True, True]
    # The push margin (no rank swap) misses segment 1, which segment 2 can overtake.
    assert flags["push", "share"] == [False, False, True]
    for e in ("share", "raw"):  # push's variants lie in the box: it never flags what the box does not
        assert all(p <= a for p, a in zip(flags["push", e], flags["adversarial", e]))
    # raw: the strengths' own changes (0.03 each), not their shares'.
    v = cs.MarginVariant(1.0, 1.0, rule, errors="raw").verdict(hist)
    np.testing.assert_allclose(v.strength_err, [0.03, 0.03, 0.03])


def test_the_tighter_check_runs_at_least_twice_the_evaluations():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs

    from segsft.method.adaptive import refine

    # A smooth path (f(a) = a^2 on one token): the bound is met early, and a 4x tighter target
    # would stop at the same point; AtLeast keeps going to twice the evaluations.
    def evaluate(a):
        a = np.asarray(a, dtype=np.float64)
        return a ** 2, (2 * a)[:, None]

    class Rule:
        segment_tokens = [(0, 1)]

        def metrics(self, t):
            return np.abs(np.asarray(t)), np.ones(len(t))

        def decide(self, s, c):
            return np.ones_like(s, dtype=bool)

        def __call__(self, t):
            return np.ones(1, dtype=bool), np.abs(np.asarray(t))

    from segsft.method.adaptive import StopTest

    plain = refine(evaluate, max_steps=64, stop=StopTest(0.5, 1.0, Rule()))
    longer = refine(evaluate, max_steps=64, stop=cs.AtLeast(StopTest(0.5, 1.0, Rule()), 2 * plain.final.steps))
    assert plain.converged and longer.converged and longer.final.steps == 2 * plain.final.steps


def test_the_errors_a_flag_must_shrink_by_before_the_reference_settles_it():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs

    from segsft.method.metrics import SegmentRule
    from segsft.method.selection_config import SelectConfig

    rule = SegmentRule([(0, 1), (1, 2)], SelectConfig(always_keep=(), max_consistency=None, top_mass=0.7))
    s, c = np.array([0.6, 0.4]), np.array([0.5, 0.5])
    train = rule.decide(s[None], c[None])[0]
    assert train.tolist() == [True, True]  # 0 before segment 1: 0.6 of the total < 0.7
    # Segment 1 leaves the prefix once segment 0's share reaches 0.7: 0.6 + 0.2x over 1.0, so at
    # x = 0.5 of errors 0.2. Segment 0 stays in unless segment 1 overtakes it and holds 0.7 of
    # the total, which errors of 0.2 cannot do: it needs no shrinking (1.0).
    got = cs.shrink_to_settle(rule, train, s, c, np.array([0.2, 0.2]), np.zeros(2), np.array([True, True]))
    assert got[0] == 1.0 and 0.5 - 1e-6 < got[1] <= 0.5  # the side that does not flip
    # The consistency moves too: segment 0 (0.5, bound 0.6) turns too consistent past 0.5 + 0.4x.
    rule = SegmentRule([(0, 1), (1, 2)], SelectConfig(always_keep=(), max_consistency=0.6, top_mass=0.7))
    got = cs.shrink_to_settle(rule, train, s, c, np.array([0.2, 0.2]), np.array([0.4, 0.0]), np.array([True, True]))
    assert 0.25 - 1e-6 < got[0] <= 0.25 and 0.5 - 1e-6 < got[1] <= 0.5


def test_the_uniform_grid_for_an_agreement_needs_every_denser_grid_to_reach_it():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs

    grids = {"t": [(5, 1.0), (9, 0.8), (17, 1.0), (33, 1.0)]}
    assert cs.uniform_for(grids, {"trace": "t", "agree_ref": 1.0}) == 17  # 5 agrees by chance, 9 does not
    assert cs.uniform_for(grids, {"trace": "t", "agree_ref": 0.8}) == 5
    assert cs.uniform_for(grids, {"trace": "other", "agree_ref": 1.0}) is None


def test_sharper_errors_scale_the_products_errors_by_a_factor_or_by_richardsons():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs

    from segsft.method.adaptive import Estimate, StopTest, flips_within
    from segsft.method.metrics import SegmentRule
    from segsft.method.selection_config import SelectConfig

    rule = SegmentRule([(0, 1), (1, 2), (2, 3)], SelectConfig(always_keep=(), max_consistency=None))
    # The consistencies move with the strengths, so their errors are |d| too and must scale alike.
    rule.metrics = lambda a: (np.asarray(a, dtype=np.float64), 0.3 + np.asarray(a, dtype=np.float64))
    now, d = np.array([0.45, 0.30, 0.25]), np.array([0.016, 0.02, -0.036])

    def history(shrink: float) -> list:
        # Strengths summing to 1 whose changes over a doubling fall `shrink`-fold: errors ~ N^-log2(shrink).
        return [Estimate(9, now + d + shrink * d, 0.01, 0.01), Estimate(18, now + d, 0.01, 0.01), Estimate(36, now, 0.01, 0.01)]

    plain = StopTest(1.0, 1.0, rule).verdict(history(4.0))
    np.testing.assert_allclose(plain.strength_err, np.abs(d))
    np.testing.assert_allclose(plain.consistency_err, np.abs(d))
    for factor, shrink, expect in ((0.5, 4.0, 0.5), ("richardson", 4.0, 1 / 3), ("richardson", 2.0, 1.0),
                                   ("richardson", 8.0, 1 / 3),  # p = 3 kept at 2
                                   ("richardson", 1.0, 1 / (2 ** 0.5 - 1))):  # p = 0 kept at 0.5
        v = cs.SharperErrors(1.0, 1.0, rule, factor=factor).verdict(history(shrink))
        np.testing.assert_allclose(v.strength_err, np.abs(d) * expect, rtol=1e-9)
        np.testing.assert_allclose(v.consistency_err, np.abs(d) * expect, rtol=1e-9)
        box = flips_within(rule, v.train, v.strength, 0.3 + now, np.tile(v.strength_err, (3, 1)), v.consistency_err)
        assert v.borderline.tolist() == box.tolist()
    # The flags shrink with the errors: at a third of them segment 1 is no longer borderline.
    assert plain.borderline.tolist() == [False, True, True]
    assert cs.SharperErrors(1.0, 1.0, rule, factor="richardson").verdict(history(4.0)).borderline.tolist() == [False, False, False]


def test_the_stall_rule_cuts_a_run_at_the_first_doubling_whose_flags_did_not_fall():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs

    from segsft.method.adaptive import Estimate

    class Flags:
        """A stop test's verdicts with `flags[steps]` flagged decisions (all borderline)."""

        def __init__(self, flags):
            self.flags = flags

        def verdict(self, head):
            n = self.flags.get(head[-1].steps)
            return None if n is None else cs.Verdict(head[-1].steps, np.zeros(4, bool), np.zeros(4), np.zeros(4),
                                                      np.arange(4) < n, np.ones(4, bool), 1.0)

    hist = [Estimate(n, np.zeros(1), 0.0, 0.0) for n in range(9, 70)]
    # 3 flags at 16 and at 32: the doubling from 16 to 32 settled none, so the run ends at 32.
    assert cs.stalled_at(Flags({16: 3, 32: 3, 64: 0}), hist, 32) == 32
    # Falling at every doubling: never cut. No flag left is no stall either.
    assert cs.stalled_at(Flags({16: 3, 32: 2, 64: 1}), hist, 32) is None
    assert cs.stalled_at(Flags({16: 0, 32: 0, 64: 0}), hist, 32) is None
    # Judged against the doubling before, not the first: 2 at 32, 2 at 64 ends at 64.
    assert cs.stalled_at(Flags({16: 3, 32: 2, 64: 2}), hist, 32) == 64


def test_the_studys_default_row_is_the_products_default_or_an_error():
    sys.path.insert(0, str(REPO / "bench"))
    import convergence_study as cs
    import pytest

    from segsft.config_schema import AttributeConf

    assert cs.default_candidate(AttributeConf(), 256) == f"default-max{AttributeConf().max_steps}"
    assert cs.default_candidate(AttributeConf(max_steps=256), 256) == "refine_on-decisions"  # the study's own cap
    assert cs.default_candidate(AttributeConf(max_steps=300), 300) == "refine_on-decisions"
    with pytest.raises(SystemExit, match="attribute.max_steps=300 has no row in the study: .* --adaptive-max 300"):
        cs.default_candidate(AttributeConf(max_steps=300), 256)
