"""The comparison methods: full trains everything; random matches the rule's tokens, from its seed."""

from __future__ import annotations

import numpy as np
import polars as pl

from segsft.select import SelectConfig, select_masks
from segsft.select.baselines import splitmix64
from segsft.select.synthetic import random_tables


def _segments(n_samples=300, n_segments=9, seed=3) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    seg, samples = random_tables(n_samples, n_segments, seed=seed)
    return pl.from_arrow(seg).lazy(), pl.from_arrow(samples).lazy()


def _tokens(mask: pl.DataFrame) -> pl.DataFrame:
    return mask.group_by("sample_id").agg(
        kept=pl.col("n_tokens").filter(pl.col("train")).sum().cast(pl.Int64),
        largest=pl.col("n_tokens").max().cast(pl.Int64),
    )


def test_random_keeps_rule_tokens_within_one_segment_per_sample():
    seg, _ = _segments()
    out = select_masks(seg, SelectConfig(method="random", seed=7))
    rule, rnd = out["attribution"], out["mask"]
    both = _tokens(rule).join(_tokens(rnd), on="sample_id", suffix="_random")
    assert both.height == 300
    diff = (both["kept_random"] - both["kept"]).abs()
    # Off by at most half the segment that crosses the budget (never more than one segment).
    assert (2 * diff <= both["largest"]).all()
    # ... and not a copy of the rule: it chooses other segments.
    assert (rule["train"] != rnd["train"]).sum() > 100
    assert set(rnd["why"]) == {"random"}
    assert rnd.select("sample_id", "segment").equals(rule.select("sample_id", "segment"))


def test_random_is_reproducible_from_its_seed_and_changes_with_it():
    seg, _ = _segments(100, 8)
    a = select_masks(seg, SelectConfig(method="random", seed=11))["mask"]
    b = select_masks(seg, SelectConfig(method="random", seed=11))["mask"]
    c = select_masks(seg, SelectConfig(method="random", seed=12))["mask"]
    assert a.equals(b)
    assert not a["train"].equals(c["train"])


def test_random_choice_of_a_sample_ignores_the_other_samples():
    seg, _ = _segments(60, 8)
    whole = select_masks(seg, SelectConfig(method="random", seed=5))["mask"]
    some = select_masks(seg.filter(pl.col("sample_id").is_in(["s1", "s7"])), SelectConfig(method="random", seed=5))["mask"]
    assert some.equals(whole.filter(pl.col("sample_id").is_in(["s1", "s7"])))


def test_random_trains_short_samples_in_full():
    seg, samples = _segments(40, 6)
    lengths = samples.collect()
    cut = int(lengths["n_tokens"].median())
    out = select_masks(seg, SelectConfig(method="random", min_tokens=cut), samples)["mask"]
    short = set(lengths.filter(pl.col("n_tokens") < cut)["sample_id"])
    assert short
    sel = out.filter(pl.col("sample_id").is_in(list(short)))
    assert sel["train"].all() and set(sel["why"]) == {"short_sample"}


def test_full_trains_every_segment():
    seg, _ = _segments(20, 5)
    m = select_masks(seg, SelectConfig(method="full"))["mask"]
    assert m.height == 100 and m["train"].all() and set(m["why"]) == {"full"}


def test_splitmix64_is_the_reference_algorithm():
    """Random choices must not depend on Polars internals: pin the wrapping arithmetic to numpy's."""
    xs = np.array([0, 1, 2**63 + 5, 2**64 - 1, 0x0123456789ABCDEF], dtype=np.uint64)

    def ref(x):
        with np.errstate(over="ignore"):
            z = x + np.uint64(0x9E3779B97F4A7C15)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            return z ^ (z >> np.uint64(31))

    got = pl.DataFrame({"x": pl.Series(xs, dtype=pl.UInt64)}).select(splitmix64(pl.col("x")))["x"].to_numpy()
    assert (got == ref(xs)).all()
    assert int(got[0]) == 0xE220A8397B1DCDAF  # SplitMix64's first output for state 0


def _score_recount(seg: pl.DataFrame, rule: pl.DataFrame, keep: tuple[int, ...], high: bool) -> dict:
    """An independent per-sample loop of select.method=score: (sample_id, segment) -> train."""
    out = {}
    budgets = {s: int(g.filter(pl.col("train"))["n_tokens"].sum()) for (s,), g in rule.group_by("sample_id")}
    short = set(rule.filter(pl.col("why") == "short_sample")["sample_id"])
    for (sid,), g in seg.sort("segment").group_by("sample_id"):
        rows = [(k, t, None if v is None or v != v else v) for k, t, v in g.select("segment", "n_tokens", "nll_mean").rows()]
        n = len(rows)
        forced = {k for k in range(n) if any(k == (i if i >= 0 else n + i) for i in keep)}
        left = budgets[sid] - sum(t for k, t, _ in rows if k in forced)
        ranked = sorted((r for r in rows if r[0] not in forced),
                        key=lambda r: (r[2] is None, -(r[2] or 0) if high else (r[2] or 0), r[0]))
        taken, before = set(), 0
        for k, t, _ in ranked:
            after = before + t
            if before < left and (after <= left or after - left <= left - before):
                taken.add(k)
            before = after
        for k, _, _ in rows:
            out[(sid, k)] = sid in short or k in forced or k in taken
    return out


def test_score_keeps_the_best_ranked_segments_within_the_rule_budget():
    seg, samples = _segments(n_samples=200, n_segments=7, seed=5)
    rng = np.random.default_rng(0)
    seg = seg.collect()
    nll = rng.uniform(0, 3, seg.height)
    nll[rng.uniform(size=seg.height) < 0.05] = np.nan  # some segments without a value: ranked last
    seg = seg.with_columns(nll_mean=pl.Series(nll))
    median = int(samples.select(pl.col("train_tokens").median()).collect().item())
    for keep, order, min_tokens in (((0, -1), "high", 0), ((), "low", 0), ((0, -2, -1), "high", median)):
        cfg = SelectConfig(method="score", score="nll_mean", order=order, always_keep=keep, min_tokens=min_tokens)
        out = select_masks(seg.lazy(), cfg, samples if min_tokens else None)
        mask, rule = out["mask"], out["attribution"]
        assert mask.select("sample_id", "segment").equals(rule.select("sample_id", "segment"))
        want = _score_recount(seg, rule, keep, order == "high")
        got = {(s, k): t for s, k, t in mask.select("sample_id", "segment", "train").rows()}
        assert got == want
        both = _tokens(rule).join(_tokens(mask), on="sample_id", suffix="_score")
        assert ((both["kept_score"] - both["kept"]).abs() <= both["largest"]).all()  # the rule's budget, within a segment
        whys = set(mask["why"])
        assert "score_rank" in whys and ("always_keep" in whys) == bool(keep)
        if min_tokens:
            assert "short_sample" in whys
        kept_forced = mask.filter(pl.col("why") == "always_keep")["train"]
        assert kept_forced.all()
