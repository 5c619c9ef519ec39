"""attribute.rule=adaptive: exact local errors, bisection, the stop test (docs/method.md step 5)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from segsft.method.adaptive import AdaptiveSettings, StopTest, refine, spearman, trapezoid_weights
from segsft.method.ig import IGPath, adaptive_integrated_gradients, answer_logprob, baseline_embeddings, freeze, path_token_grads
from segsft.method.metrics import SegmentRule, segment_metrics
from segsft.store.layout import RunLayout
from segsft.method.selection_config import SelectConfig
from segsft.method.rule import decide
from segsft.method.text import build_sequence, resolve_pattern
from tiny_model import tiny_qwen2

SOLUTION = (
    "We need half of one. That is 0.5.\n\nWait, as a fraction it is \\frac{1}{2}."
    "\n\nAlternatively, 1 divided by 2 gives the same.\n\nHowever, check: 2 times 0.5 is 1. So \\frac{1}{2}."
)


@pytest.fixture(scope="module")
def seq(tokenizer):
    return build_sequence(tokenizer, "What is half of one?", SOLUTION, resolve_pattern("default"), "\\frac{1}{2}")


@pytest.fixture(scope="module")
def model(tokenizer):
    return freeze(tiny_qwen2(tokenizer, seed=1).double())


def _inputs(seq):
    n = int(seq.answer_positions[-1]) + 1
    return torch.as_tensor(seq.input_ids[:n]), torch.as_tensor(seq.answer_positions)


def _decide(seq):
    return SegmentRule(seq.segment_tokens, SelectConfig())


def test_smooth_model_stops_early_and_equals_the_fixed_rule_on_its_nodes(model, tokenizer, seq):
    ids, pos = _inputs(seq)
    path = IGPath(model, ids, pos, pad_id=tokenizer.pad_token_id, batch_alphas=2)
    res = refine(path, max_steps=256, per_round=2, stop=StopTest(1e-2, 0.95, _decide(seq)))
    # A random tiny model is smooth along the path: a few bisections suffice.
    assert res.converged and res.final.steps <= 32 and res.final.gap <= 1e-2
    # The same nodes through the fixed-rule code path give the same attributions.
    fixed = path_token_grads(model, ids, pos, res.alphas, pad_id=tokenizer.pad_token_id).integrate(trapezoid_weights(res.alphas))
    np.testing.assert_allclose(res.final.token_attr, fixed.token_attr, rtol=1e-10, atol=1e-12)


def test_reported_gap_equals_an_independent_recomputation(model, tokenizer, seq):
    ids, pos = _inputs(seq)
    res = adaptive_integrated_gradients(model, ids, pos, AdaptiveSettings(target_gap=1e-2, max_steps=64),
                                        decide=_decide(seq), pad_id=tokenizer.pad_token_id, batch_alphas=3)
    with torch.no_grad():  # f(x) and f(x') by plain forward passes of the model, not from the path
        x = model.get_input_embeddings()(ids)
        base = baseline_embeddings(model, ids, "pad", tokenizer.pad_token_id)
        fx, fb = answer_logprob(model, torch.stack([x, base]), ids, pos).tolist()
    assert res.answer_logprob == pytest.approx(fx, abs=1e-10) and res.baseline_logprob == pytest.approx(fb, abs=1e-10)
    assert res.completeness_gap == pytest.approx(abs(res.token_attr.sum() - (fx - fb)) / abs(fx - fb), rel=1e-9)
    assert res.converged and res.decision_stability >= 0.95 and 9 < res.steps_used <= 64


def _spike_path(center=0.3712, width=2e-4, height=4000.0, weights=(1.0, -0.5, 2.0, 0.25)):
    """A made-up integrand with a narrow Gaussian spike that only token 2 sees, and its exact f."""
    w = np.asarray(weights)
    calls: list[np.ndarray] = []

    def spike(a):
        return height * np.exp(-(((a - center) / width) ** 2))

    def spike_int(a):  # integral of spike from 0 to a
        c = height * width * math.sqrt(math.pi) / 2
        return c * (math.erf((a - center) / width) + math.erf(center / width))

    def evaluate(alphas):
        alphas = np.asarray(alphas, dtype=np.float64)
        calls.append(alphas.copy())
        g = np.outer(1.0 + 0.5 * np.cos(3 * alphas), w)
        g[:, 2] += spike(alphas)
        f = np.array([w.sum() * (a + 0.5 * math.sin(3 * a) / 3) + spike_int(a) for a in alphas])
        return f, g

    exact = w * (1 + 0.5 * math.sin(3) / 3)
    exact[2] += spike_int(1.0)
    return evaluate, calls, exact


def test_finds_a_narrow_spike_and_meets_the_gap_target():
    evaluate, calls, exact = _spike_path()
    res = refine(evaluate, max_steps=400, per_round=1, stop=lambda h: h[-1].gap <= 1e-3)
    assert res.converged and res.final.gap <= 1e-3
    # The spike holds most of token 2's integral; uniform 9 points miss it entirely.
    near = np.abs(res.alphas - 0.3712) < 5 * 2e-4
    assert near.sum() >= 5
    np.testing.assert_allclose(res.final.token_attr, exact, rtol=2e-2)
    uniform = np.linspace(0, 1, 9)
    f, g = evaluate(uniform)
    assert abs((trapezoid_weights(uniform) @ g).sum() - (f[-1] - f[0])) / abs(f[-1] - f[0]) > 0.1


def test_no_point_is_evaluated_twice():
    evaluate, calls, _ = _spike_path()
    res = refine(evaluate, max_steps=120, per_round=3)
    every = np.concatenate(calls)
    assert len(every) == len(np.unique(every)) == len(res.alphas) == res.final.steps == 120
    # Each round's points go through the model in one call (one pass per round).
    assert [len(c) for c in calls[1:]] == [3] * ((120 - 9) // 3)


class _Rule:
    """A stand-in select rule: strengths are token_attr itself (one token per segment), a
    segment is trained when its strength is >= 1 (consistency ignored)."""

    def metrics(self, a):
        return np.asarray(a, dtype=np.float64), np.full(len(a), 0.5)

    def decide(self, s, c):
        return np.asarray(s) >= 1.0


def _est(steps, attr, gap=0.01, bound=0.01):
    from segsft.method.adaptive import Estimate

    return Estimate(steps, np.asarray(attr, dtype=np.float64), gap, bound)


def test_stop_test_uses_the_bound_not_a_gap_that_cancels():
    # Decisions long settled, a signed gap of 0.001, but the sum of |local errors| is 0.9:
    # the whole trace (gap 0.011, bound 0.98). Not converged; with the bound met, it is.
    hist = [_est(s, [3.0, 0.2], gap=0.001, bound=0.9) for s in (9, 12, 18)]
    assert not StopTest(0.05, 1.0, _Rule())(hist)
    hist[-1] = _est(18, [3.0, 0.2], gap=0.001, bound=0.04)
    assert StopTest(0.05, 1.0, _Rule())(hist)


def test_a_decision_that_flipped_and_flipped_back_within_the_doubling_is_not_settled():
    # Segment 1 crosses the threshold at 14 steps and is back at 18: comparing 18 with 9
    # alone sees no change; the verdict's window (every estimate since 9) does.
    hist = [_est(9, [3.0, 0.9]), _est(14, [3.0, 1.05]), _est(18, [3.0, 0.92])]
    v = StopTest(0.05, 1.0, _Rule()).verdict(hist)
    assert v.train.tolist() == [True, False] and v.settled.tolist() == [True, False]
    # The strength error is the largest change of the strength's share over the window, in units
    # of strength: at 14 steps segment 1 held 1.05 of 4.05, now 0.92 of 3.92 (and segment 0 the rest).
    e = abs(1.05 / 4.05 - 0.92 / 3.92) * 3.92
    assert e > abs(0.9 / 3.9 - 0.92 / 3.92) * 3.92  # the largest change is the one at 14 steps
    np.testing.assert_allclose(v.strength_err, [e, e], atol=1e-12)
    assert v.borderline.tolist() == [False, True]  # 0.92 + 0.096 reaches the threshold 1
    assert not StopTest(0.05, 1.0, _Rule())(hist)  # borderline, and max_borderline=0 allows none
    assert StopTest(0.05, 1.0, _Rule(), max_borderline=0.5)(hist)  # one of two may be borderline


def test_verdict_errors_equal_an_independent_recomputation_on_a_real_path(model, tokenizer, seq):
    ids, pos = _inputs(seq)
    path = IGPath(model, ids, pos, pad_id=tokenizer.pad_token_id, batch_alphas=2)
    test = StopTest(1e-9, 1.0, _decide(seq), margin="own")  # never met: refine to max_steps
    res = refine(path, max_steps=30, per_round=1, stop=test)
    v = test.verdict(res.history)
    strength = lambda a: np.array([m["strength"] for m in segment_metrics(a, seq.segment_tokens)])  # noqa: E731
    now = strength(res.final.token_attr)
    window = [e for e in res.history if e.steps >= 15]  # the estimate at 15 = 30 / 2, and every later one
    # The largest change of each strength's share of their sum, in units of strength.
    share = lambda x: x / x.sum()  # noqa: E731
    expect = np.max([np.abs(share(strength(e.token_attr)) - share(now)) for e in window], axis=0) * now.sum()
    np.testing.assert_allclose(v.strength_err, expect, rtol=1e-9, atol=1e-12)
    decisions = [decide(strength(e.token_attr), [m["consistency"] for m in segment_metrics(e.token_attr, seq.segment_tokens)],
                        SelectConfig()) for e in window]
    assert v.settled.tolist() == np.all([d == decisions[-1] for d in decisions], axis=0).tolist()
    # Borderline with attribute.margin=own, recomputed one segment and one move at a time with the
    # select rule itself: its own strength +-err with its consistency at either end of +-its largest
    # change over the window or at select.max_consistency where that is within reach, the others
    # as they are.
    cons = lambda a: np.array([np.nan if m["consistency"] is None else m["consistency"]  # noqa: E731
                               for m in segment_metrics(a, seq.segment_tokens)])
    c_now = cons(res.final.token_attr)
    c_err = np.max([np.nan_to_num(np.abs(cons(e.token_attr) - c_now)) for e in window], axis=0)
    train = decisions[-1]
    expect_bl = []
    for k in range(len(now)):
        flips = False
        cs = [c_now[k] + c_err[k], c_now[k] - c_err[k]]
        if abs(c_now[k] - SelectConfig().max_consistency) <= c_err[k]:
            cs.append(SelectConfig().max_consistency)
        for ds in (expect[k], -expect[k]):
            for ck in cs:
                s2, c2 = now.copy(), c_now.copy()
                s2[k] = max(s2[k] + ds, 0.0)
                c2[k] = min(max(ck, 0.0), 1.0)
                flips |= bool(decide(s2, [None if np.isnan(x) else x for x in c2], SelectConfig())[k] != train[k])
        expect_bl.append(flips)
    assert v.borderline.tolist() == expect_bl
    # The bound is never below the gap it bounds.
    assert all(e.error_sum >= e.gap - 1e-12 for e in res.history)


def test_no_borderline_without_error_and_a_tie_at_the_threshold_is_borderline():
    exact = [_est(9, [3.0, 0.5]), _est(18, [3.0, 0.5])]
    v = StopTest(0.05, 1.0, _Rule()).verdict(exact)
    assert not v.borderline.any() and (v.strength_err == 0).all()
    at = [_est(9, [3.0, 1.001]), _est(18, [3.0, 0.999])]  # 0.002 of error around the threshold
    assert StopTest(0.05, 1.0, _Rule()).verdict(at).borderline.tolist() == [False, True]


def test_borderline_from_the_real_rule_flips_within_the_errors():
    # Three segments, top_mass 0.7: strengths 0.5, 0.3, 0.2 put segments 0 and 1 in the prefix
    # (0.5/1.0 < 0.7, the crossing one included). With 0.05 of error, segment 1 can drop out
    # (0.5 + 0.05 over 1.0 - 0.05 + ... reaches 0.7 before it) or stay; segment 2 cannot enter.
    from segsft.method.adaptive import StopTest as T

    rule = SegmentRule([(0, 1), (1, 2), (2, 3)], SelectConfig(always_keep=(), max_consistency=None))
    hist = [_est(9, [0.55, 0.3, 0.15]), _est(18, [0.5, 0.3, 0.2])]
    rule.metrics = lambda a: (np.asarray(a, dtype=np.float64), np.full(3, 0.5))  # strengths as given
    v = T(0.05, 1.0, rule).verdict(hist)
    assert v.train.tolist() == [True, True, False]
    np.testing.assert_allclose(v.strength_err, [0.05, 0.0, 0.05])
    # Segment 0 stays first; segment 1 needs 0.5 of 1.0 before it: with 0.55 and 0.15 it is at
    # 0.55/1.0 < 0.7 still in; segment 2 at 0.25 after 0.45 + 0.3 = 0.75 / 1.0 is out. Nothing flips.
    assert v.borderline.tolist() == [False, False, False]
    hist = [_est(9, [0.45, 0.3, 0.25]), _est(18, [0.4, 0.3, 0.3])]  # 0.4 / 1.0, then 0.7: segment 1/2 tie
    v = T(0.05, 1.0, rule).verdict(hist)
    assert v.borderline[1] or v.borderline[2]


def test_stop_test_compares_with_the_estimate_at_half_the_steps():
    hist = [_est(9, [2.0, 1.5]), _est(16, [2.0, 1.2]), _est(18, [2.0, 0.5])]
    t = StopTest(0.05, 0.95, _Rule())
    assert t.stability(hist[:2]) == (None, None)  # no estimate with <= 8 steps yet
    share, rho = t.stability(hist)  # 18 vs 9..16: segment 1 changed its decision
    assert share == pytest.approx(0.5) and rho == pytest.approx(1.0)
    assert not t(hist)
    assert spearman(np.array([1.0, 2, 3]), np.array([3.0, 2, 1])) == pytest.approx(-1.0)


def test_one_spearman_undefined_is_none_and_the_stop_test_reads_it_as_order_kept():
    assert spearman(np.array([1.0, 2, 2, 5]), np.array([0.1, 0.3, 0.3, 0.2])) == pytest.approx(
        np.corrcoef([0, 1.5, 1.5, 3], [0, 2.5, 2.5, 1])[0, 1])  # ties share their mean rank
    assert spearman(np.array([1.0]), np.array([2.0])) is None
    assert spearman(np.array([1.0, 1.0]), np.array([1.0, 2.0])) is None  # a constant side
    class Never:  # strengths are token_attr; no segment is ever trained, so every decision is settled
        def metrics(self, a):
            return np.asarray(a, dtype=np.float64), np.full(len(a), 0.5)

        def decide(self, s, c):
            return np.zeros(np.shape(s), bool)

    for now, half, rho in (([2.0, 2.0], [3.0, 3.0], 1.0), ([2.0, 2.0], [1.0, 3.0], 0.0), ([4.0], [1.0], 1.0)):
        t = StopTest(0.05, 0.95, Never(), ranks=True)
        assert t.stability([_est(8, half), _est(16, now)]) == (1.0, rho)


def test_attribute_stage_writes_the_adaptive_columns(tmp_path, tiny_model_dir):
    import polars as pl
    from omegaconf import OmegaConf

    from conftest import compose_config, make_traces, write_jsonl
    from segsft.attribute import AttributeStage

    corpus = write_jsonl(tmp_path / "t.jsonl", make_traces(3))
    cfg = compose_config(f"run_dir={tmp_path / 'run'}", f"data.path={corpus}", f"model.name_or_path={tiny_model_dir}",
                         "attribute.rule=adaptive", "attribute.max_steps=96", "attribute.target_gap=0.01")
    AttributeStage(OmegaConf.to_container(cfg, resolve=True)).run(0, 1)
    smp = pl.read_parquet(RunLayout(tmp_path / "run").attribution.finished("samples"))
    assert smp.height == 3 and (smp["rule"] == "adaptive").all() and (smp["steps"] == 96).all()
    assert smp["converged"].to_list() == [True] * 3
    assert ((smp["steps_used"] >= 18) & (smp["steps_used"] <= 96)).all()
    # Converged on the bound: it is met and it bounds the gap.
    assert (smp["error_bound"] <= 0.01).all() and (smp["completeness_gap"] <= smp["error_bound"] + 1e-12).all()
    assert (smp["decision_stability"] >= 0.95).all()
    seg = pl.read_parquet(RunLayout(tmp_path / "run").attribution.finished("segments"))
    assert seg["strength_err"].null_count() == 0 and (seg["strength_err"] >= 0).all()
    assert seg["borderline"].null_count() == 0


def test_adaptive_run_killed_after_a_flush_resumes_to_the_same_tables(tmp_path, tiny_model_dir, monkeypatch):
    import polars as pl
    from omegaconf import OmegaConf

    from conftest import compose_config, make_traces, write_jsonl
    from segsft.attribute import AttributeStage
    from segsft.store.parts import PartWriter

    corpus = write_jsonl(tmp_path / "t.jsonl", make_traces(4))

    def stage(run: str):
        cfg = compose_config(f"run_dir={tmp_path / run}", f"data.path={corpus}", f"model.name_or_path={tiny_model_dir}",
                             "attribute.rule=adaptive", "attribute.max_steps=24", "attribute.flush_every=1")
        return AttributeStage(OmegaConf.to_container(cfg, resolve=True))

    def tables(run: str):
        lay = RunLayout(tmp_path / run).attribution
        return [pl.read_parquet(lay.finished(t)).drop("seconds", strict=False).sort("sample_id", *(["segment"] if t == "segments" else []))
                for t in ("segments", "samples", "rejects")]

    stage("whole").run(0, 1)
    flush, calls = PartWriter.flush, []

    def dying_flush(self, buf):  # the process dies right after its second chunk is on disk
        flush(self, buf)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(PartWriter, "flush", dying_flush)
    with pytest.raises(KeyboardInterrupt):
        stage("killed").run(0, 1)
    monkeypatch.setattr(PartWriter, "flush", flush)
    assert RunLayout(tmp_path / "killed").attribution.committed_chunks("00000-of-00001") == [0, 1]
    stage("killed").run(0, 1)
    for a, b in zip(tables("whole"), tables("killed")):
        assert a.equals(b)
    assert tables("killed")[1]["sample_id"].n_unique() == tables("killed")[1].height == 4


def test_config_checks_name_the_adaptive_and_select_problems_before_any_model_loads(tmp_path):
    from conftest import compose_config
    from segsft.attribute.config import check_attribute

    cfg = compose_config(f"run_dir={tmp_path}", "attribute.max_steps=16", "attribute.per_round=0",
                         "select.top_mass=2", "attribute.target_stability=1.5")
    errs = "\n".join(check_attribute(cfg))
    assert "attribute.max_steps=16: use an integer in [18, 16384]" in errs
    assert "attribute.per_round=0" in errs and "attribute.target_stability=1.5" in errs
    assert "select.top_mass=2" in errs and "stop test uses the select settings" in errs
    # Targets that cannot be met, and an unknown borderline policy, before any model loads.
    floor = compose_config(f"run_dir={tmp_path}", "attribute.dtype=bfloat16", "attribute.target_gap=0.01",
                           "attribute.max_borderline=2", "select.borderline=maybe", "attribute.refine_on=segments",
                           "attribute.margin=rss")
    errs = "\n".join(check_attribute(floor))
    assert "attribute.refine_on='segments': use one of total, decisions" in errs
    assert "attribute.margin='rss': use one of adversarial, own" in errs
    assert "attribute.target_gap=0.01 is below the rounding floor of bfloat16 (0.016" in errs
    assert "attribute.max_borderline=2" in errs and "select.borderline='maybe': use one of ['rule', 'keep', 'drop']" in errs
    assert not any("rounding floor" in e for e in check_attribute(compose_config(
        f"run_dir={tmp_path}", "attribute.dtype=float32", "attribute.target_gap=0.01")))
    # The wider dtype suggested is wider than the one in use and fine enough, or none is named;
    # a value below the range gets the range's line only.
    def gap_lines(dtype: str, gap: float) -> list[str]:
        return [e for e in check_attribute(compose_config(f"run_dir={tmp_path}", f"attribute.dtype={dtype}",
                                                          f"attribute.target_gap={gap}")) if "target_gap" in e]
    assert "0.01 is below the rounding floor of bfloat16" in gap_lines("bfloat16", 0.01)[0]
    assert gap_lines("bfloat16", 0.01)[0].endswith("(attribute.dtype=float32)")
    (f32,) = gap_lines("float32", 1e-8)
    assert "rounding floor of float32 (2.4e-07" in f32 and f32.endswith("(attribute.dtype=float64)"), f32
    assert gap_lines("float64", 1e-8) == []
    assert gap_lines("float32", 1e-10) == ["attribute.target_gap=1e-10: use a number in [1e-09, 10], the error "
                                           "bound to reach relative to |f(x) - f(x')| (e.g. 2.0)"]
    # A fixed rule has no stop test, so the select settings are select's own business.
    fixed = compose_config(f"run_dir={tmp_path}", "attribute.rule=linspace", "select.top_mass=2")
    assert not any("select.top_mass" in e for e in check_attribute(fixed))


def test_fixed_per_round_gives_the_same_nodes_whatever_the_points_per_pass(model, tokenizer, seq):
    ids, pos = _inputs(seq)
    s = AdaptiveSettings(target_gap=1e-3, max_steps=30, per_round=2)
    a = adaptive_integrated_gradients(model, ids, pos, s, pad_id=tokenizer.pad_token_id, batch_alphas=1)
    b = adaptive_integrated_gradients(model, ids, pos, s, pad_id=tokenizer.pad_token_id, batch_alphas=4)
    assert a.steps_used == b.steps_used
    np.testing.assert_allclose(a.token_attr, b.token_attr, rtol=1e-9, atol=1e-12)


class _SegRule:
    """Two one-token segments with fixed segment_tokens; strength = token_attr, trained when >= 1."""

    segment_tokens = [(0, 1), (1, 2)]
    metrics, decide = _Rule.metrics, _Rule.decide


def _two_token_path():
    """Token 0 rises by 2 on [0.6, 0.65], token 1 by 0.3 on [0.15, 0.2]; f is the integral of their sum."""
    def g(a):
        return np.stack([np.clip((a - 0.6) / 0.05, 0, 1) * 2.0, np.clip((a - 0.15) / 0.05, 0, 1) * 0.3], axis=1)

    def f(a):
        ramp = lambda a, lo: np.clip(a - lo, 0, 0.05) ** 2 / 0.1 + np.clip(a - lo - 0.05, 0, None)  # noqa: E731
        return 2.0 * ramp(a, 0.6) + 0.3 * ramp(a, 0.15)

    return lambda a: (f(np.asarray(a)), g(np.asarray(a)))


def test_refine_on_decisions_puts_the_points_where_the_flagged_segment_changes():
    from segsft.method.adaptive import AdaptivePath, Verdict

    evaluate = _two_token_path()
    alphas = np.linspace(0, 1, 9)
    f, g = evaluate(alphas)
    path = AdaptivePath(alphas, f, g)
    path.history.append(_est(9, [1.0, 0.3], bound=0.5))
    test = StopTest(1.0, 1.0, _SegRule(), refine_on="decisions")
    # Segment 1 (token 1) is flagged borderline: the priority is h * |g_1(b) - g_1(a)|, as a share.
    test._verdicts[9] = Verdict(9, np.array([True, False]), np.array([1.0, 0.3]), np.zeros(2),
                                np.array([False, True]), np.array([True, True]), 1.0)
    prio = test.focus(path)
    expect = np.diff(alphas) * np.abs(np.diff(g[:, 1]))
    np.testing.assert_allclose(prio, expect / expect.sum())
    assert int(np.argmax(prio)) == 1  # [0.125, 0.25] holds token 1's step
    assert int(np.argmax(path.local_errors())) in (4, 5)  # the total's error is at token 0's larger step
    # Not before the bound is met, nor for refine_on=total, nor with nothing flagged.
    path.history[-1] = _est(9, [1.0, 0.3], bound=1.5)
    assert test.focus(path) is None
    path.history[-1] = _est(9, [1.0, 0.3], bound=0.5)
    assert StopTest(1.0, 1.0, _SegRule()).focus(path) is None
    test._verdicts[9] = Verdict(9, np.array([True, False]), np.array([1.0, 0.3]), np.zeros(2),
                                np.array([False, False]), np.array([True, True]), 1.0)
    assert test.focus(path) is None


def test_refine_follows_the_focus_and_falls_back_to_the_local_errors():
    evaluate = _two_token_path()
    picked = []

    def focus(path):
        prio = np.zeros(len(path.alphas) - 1)
        prio[0] = 1.0  # always the first subinterval
        return prio if len(path.alphas) < 12 else None

    res = refine(lambda a: (picked.append(np.asarray(a).copy()), evaluate(a))[1], max_steps=14, per_round=1, focus=focus)
    firsts = [float(p[0]) for p in picked[1:4]]
    assert firsts == [0.0625, 0.03125, 0.015625]  # three bisections of the first subinterval
    assert res.final.steps == 14 and len(np.unique(res.alphas)) == 14


def test_the_own_margin_moves_the_segments_own_strength_only_the_adversarial_one_all():
    # attribute.margin=own: a segment is borderline when its own strength +-err flips its decision,
    # the other segments as they are; adversarial (default) takes the worst case over all of them.
    rule = SegmentRule([(0, 1), (1, 2), (2, 3)], SelectConfig(always_keep=(), max_consistency=None))
    rule.metrics = lambda a: (np.asarray(a, dtype=np.float64), np.full(3, 0.5))
    # Now 0.45, 0.30, 0.25 (top_mass 0.7: 0.45 before segment 1, in; 0.75 before segment 2, out);
    # before, 0.48, 0.33, 0.22 of 1.03. The errors are the shares' changes times the sum now (1.0).
    hist = [_est(9, [0.48, 0.33, 0.22]), _est(18, [0.45, 0.30, 0.25])]
    err = np.abs(np.array([0.48, 0.33, 0.22]) / 1.03 - [0.45, 0.30, 0.25])
    v = StopTest(1.0, 1.0, rule, margin="own").verdict(hist)
    np.testing.assert_allclose(v.strength_err, err, rtol=1e-12)
    # Alone, segment 2 at 0.25 + 0.036 is still third (0.75 / 1.036 before it: out) and segment 1
    # at 0.30 - 0.020 still second (0.45 / 0.98: in): nothing flips.
    assert v.train.tolist() == [True, True, False] and v.borderline.tolist() == [False, False, False]
    # Adversarially, segment 2 at 0.286 overtakes segment 1 at 0.280: with segment 0 at 0.466
    # before it, segment 2 is in (0.466 / 1.032 < 0.7) and segment 1 out ((0.466 + 0.286) / 1.032
    # = 0.729 >= 0.7). A margin that moves each segment only towards the flip, with the order
    # kept (the margin before this one), flags segment 2 alone.
    assert StopTest(1.0, 1.0, rule).verdict(hist).borderline.tolist() == [False, True, True]
    # A tie at 0.25 (segment 1 ranked first of the two by index, in; segment 2 out): either one
    # moved alone by its error (0.015 and 0.005, the shares' changes from 0.27 and 0.25 of 1.02)
    # takes the other's place, so both flip on their own; segment 0 (0.5 +- 0.01) does not.
    hist = [_est(9, [0.5, 0.27, 0.25]), _est(18, [0.5, 0.25, 0.25])]
    v = StopTest(1.0, 1.0, rule, margin="own").verdict(hist)  # a new test: verdicts are memoised by steps
    np.testing.assert_allclose(v.strength_err, np.abs(np.array([0.5, 0.27, 0.25]) / 1.02 - [0.5, 0.25, 0.25]))
    assert v.train.tolist() == [True, True, False] and v.borderline.tolist() == [False, True, True]


def test_the_adversarial_margin_is_the_worst_case_over_the_error_box():
    # flips_within against brute force: for random strengths, errors and consistencies, a segment
    # is borderline exactly when some point of the box (every strength within +-err, its own
    # consistency within +-c_err) changes its decision. The search grid puts each strength at its
    # ends, its middle, and every other strength's ends (and just below them, for the rule's ties
    # by index) that lie in its range: wherever the order of two segments can change.
    from itertools import product

    from segsft.method.adaptive import flips_within

    rng = np.random.default_rng(0)
    flagged_any = 0
    # Values on a grid of 1/8 (exact in binary), so ties and exact thresholds do occur; half the
    # draws set both consistency bounds, where a move past one end can land between them.
    for trial in range(60):
        both = trial % 2 == 1
        cfg = SelectConfig(always_keep=(), top_mass=float(rng.choice([0.5, 0.625, 0.75])), max_consistency=0.75,
                           min_consistency=0.375 if both else None)
        n = int(rng.integers(2, 5))
        rule = SegmentRule([(i, i + 1) for i in range(n)], cfg)
        s = rng.integers(0, 9, n) / 8
        err = rng.integers(0, 3, n) / 8
        c = rng.integers(0, 9, n) / 8
        c_err = rng.integers(0, 5, n) / 8
        train = rule.decide(s[None, :], c[None, :])[0]
        flagged = flips_within(rule, train, s, c, np.tile(err, (n, 1)), c_err)
        lo, hi = np.clip(s - err, 0.0, None), s + err
        ends = np.concatenate([lo, hi])
        axes = [sorted({lo[j], s[j], hi[j], *(v for e in ends for v in (e, np.nextafter(e, -np.inf))
                                              if lo[j] <= v <= hi[j])}) for j in range(n)]
        grid = np.array(list(product(*axes)))
        found = np.zeros(n, dtype=bool)
        # A decision depends on the strengths and its own consistency only: every segment's
        # consistency takes the same move at once, and each segment reads its own.
        # Every consistency on the 1/8 grid within reach (the bounds are on it too).
        for step in range(-8, 9):
            c2 = np.where(np.abs(step / 8) <= c_err, np.clip(c + step / 8, 0.0, 1.0), c)
            found |= (rule.decide(grid, np.tile(c2, (len(grid), 1))) != train[None, :]).any(axis=0)
        assert flagged.tolist() == found.tolist(), (trial, s, err, c, c_err)
        flagged_any += int(flagged.sum())
    assert flagged_any > 10  # the draws do reach borderline decisions
    # Cases that a margin missing one piece of the worst case gets wrong (each checked by hand):
    # - a tie: segment 0 at 0.5 ties segment 1 and, first by index, ranks before it: 0.5 of 1.0
    #   before segment 1 reaches top_mass 0.5, so segment 1 leaves the prefix;
    # - the others at their lowest: segment 1 has 0.5 of 0.875 before it (0.57 < 0.6, in); with
    #   segment 2 at its lowest, 0.5 of 0.8125 (0.615): out;
    # - a consistency bound within reach: 0.9 - 0.6 overshoots [0.4, 0.6], the bound itself does not.
    cases = [
        (SelectConfig(always_keep=(), top_mass=0.5, max_consistency=None), [0.25, 0.5], [0.25, 0.0], [0.5, 0.5], [0.0, 0.0], 1),
        (SelectConfig(always_keep=(), top_mass=0.6, max_consistency=None), [0.5, 0.25, 0.125], [0.0, 0.0, 0.0625],
         [0.5, 0.5, 0.5], [0.0, 0.0, 0.0], 1),
        (SelectConfig(always_keep=(), top_mass=0.9, min_consistency=0.4, max_consistency=0.6), [0.5, 0.5], [0.0, 0.0],
         [0.9, 0.5], [0.6, 0.0], 0),
    ]
    for cfg, s, err, c, c_err, k in cases:
        rule = SegmentRule([(i, i + 1) for i in range(len(s))], cfg)
        s, err, c, c_err = (np.array(x, dtype=np.float64) for x in (s, err, c, c_err))
        train = rule.decide(s[None, :], c[None, :])[0]
        assert flips_within(rule, train, s, c, np.tile(err, (len(s), 1)), c_err)[k], (s, err, c)


def test_a_run_made_under_the_earlier_stop_test_is_refused_naming_what_changed(tmp_path):
    # Runs scored before refine_on and margin existed stored neither key, and the stop test
    # "bound+margins" (margins without rank swaps, on the strengths' own changes): resuming one
    # would mix two kinds of flags, so it is refused, naming the values those runs had.
    from conftest import compose_config
    from segsft.config_schema import Settings
    from segsft.store.fingerprint import fingerprint, settings_diff

    corpus = tmp_path / "c.jsonl"
    corpus.write_text('{"id": "a", "question": "q", "solution": "s", "answer": "1"}\n')
    fp = lambda *o: fingerprint(Settings.of(compose_config(f"run_dir={tmp_path}", f"data.path={corpus}", *o)),  # noqa: E731
                                "float32", "x")
    now = fp()
    assert now["refine_on"] == "decisions" and now["margin"] == "adversarial" and now["max_borderline"] == 0.0
    older = {k: v for k, v in now.items() if k not in ("refine_on", "margin")} | {"stop_test": "bound+margins"}
    assert settings_diff(older, now) == [
        "refine_on: 'total' there, 'decisions' now",
        "stop_test: 'bound+margins' there, 'bound+box-margins-on-shares' now"]
    assert settings_diff(fp("attribute.margin=own"), now) == ["margin: 'own' there, 'adversarial' now"]


def test_strength_errors_count_a_non_finite_strength_as_zero_as_the_rule_does():
    # Shares of [0, 0.5, 0.5] now against [0.2, 0.4, 0.4] of 1.0 before: 0.2 and 0.1 of a sum of 1.
    err = StopTest(1.0, 1.0, None).strength_errors(np.array([np.nan, 0.5, 0.5]), [np.array([0.2, 0.4, np.inf])])
    np.testing.assert_allclose(err, [0.2 / 0.6, abs(0.4 / 0.6 - 0.5), 0.5])
