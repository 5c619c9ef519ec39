"""docs/method.md step 7, the attribution rule, as Polars lazy expressions (no loop over rows).

Per sample, exactly:
1. Order the segments by strength, descending; ties by segment index, ascending. A null,
   NaN or infinite strength counts as 0 (it carries no mass).
2. mass_before(k) = the strengths of the segments ordered before k, summed in that order;
   total = the sum of all of them, in the same order (so the last share is exactly 1).
   Segment k is in the top-mass prefix when total > 0 and mass_before(k) / total < top_mass:
   the shortest prefix whose cumulative share reaches top_mass, the crossing segment
   included. A zero-strength segment therefore never enters it (its mass_before is the
   total), and a sample whose strengths sum to 0 has an empty prefix (no NaN is formed).
3. A prefix segment is trained when its consistency is <= max_consistency and >=
   min_consistency (each only when set). A null (or NaN) consistency cannot be judged: it
   fails every bound that is set (why=null_consistency); with no bound set it passes.
4. Segments listed in always_keep are trained whatever 2-3 said; index i >= 0 is segment i,
   i < 0 is segment n + i (n = the sample's segment count); out-of-range indices are ignored.
5. A sample whose training sequence (the samples table's `train_tokens`: prompt + trace,
   docs/method.md step 8) has fewer than min_tokens tokens is trained in full.

`why` takes the first that applies: short_sample, top_mass (kept by 2-3), always_keep,
below_top_mass, null_consistency, too_consistent, not_consistent_enough. `borderline` is
the attribution's flag, carried over (false where the segments table has none); what to do
with it is `select.borderline`'s, applied after the rule (segsft.select.stage).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from segsft.method.selection_config import SelectConfig
from segsft.schemas import MASKS_COLUMNS, SID



def _finite_or_zero(name: str) -> pl.Expr:
    c = pl.col(name)
    return pl.when(c.is_finite()).then(c).otherwise(0.0)


def with_short_samples(segments: pl.LazyFrame, sample_tokens: pl.LazyFrame | None, min_tokens: int) -> pl.LazyFrame:
    """Add `_short`: the sample has fewer than min_tokens tokens (false when unknown or min_tokens=0)."""
    if min_tokens <= 0 or sample_tokens is None:
        return segments.with_columns(_short=pl.lit(False))
    # The training sequence (prompt + trace, docs/method.md step 8) when attribution recorded it.
    names = sample_tokens.collect_schema().names()
    length = pl.coalesce("train_tokens", "n_tokens") if "train_tokens" in names else pl.col("n_tokens")
    lengths = sample_tokens.select(SID, _seq_tokens=length).unique(SID)
    return (segments.join(lengths, on=SID, how="left")
            .with_columns(_short=(pl.col("_seq_tokens") < min_tokens).fill_null(False))
            .drop("_seq_tokens"))


def always_keep(keep: tuple[int, ...]) -> pl.Expr:
    """True on the rows of the segment indices `keep` (negative: from the end) of each sample."""
    seg = pl.col("segment").cast(pl.Int64)
    n = pl.len().over(SID).cast(pl.Int64)
    # Out-of-range indices match no row: i >= n exceeds every segment, n + i < 0 precedes them.
    hits = [seg == i if i >= 0 else seg == n + i for i in keep]
    return pl.any_horizontal(hits) if hits else pl.lit(False)


def _consistency_ok(cfg: SelectConfig) -> pl.Expr:
    c = pl.col("_c")
    ok = pl.lit(True)
    if cfg.max_consistency is not None:
        ok = ok & (c <= cfg.max_consistency)
    if cfg.min_consistency is not None:
        ok = ok & (c >= cfg.min_consistency)
    return ok.fill_null(False)  # a null consistency fails any bound that is set


def attribution_rule(segments: pl.LazyFrame, cfg: SelectConfig, sample_tokens: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """The mask of docs/method.md step 7: MASKS_COLUMNS, one row per segment, sorted by sample and segment.

    `segments` needs sample_id, segment, char_start, char_end, n_tokens, strength, consistency;
    `sample_tokens` (sample_id, n_tokens) is read only when cfg.min_tokens > 0.
    """
    lf = with_short_samples(segments, sample_tokens, cfg.min_tokens)
    lf = lf.with_columns(_s=_finite_or_zero("strength"), _c=pl.col("consistency").fill_nan(None))
    lf = lf.sort([SID, "_s", "segment"], descending=[False, True, False])
    cum = pl.col("_s").cum_sum()
    lf = lf.with_columns(
        _before=cum.shift(1, fill_value=0.0).over(SID),
        _total=cum.last().over(SID),
        _keep=always_keep(cfg.always_keep),
    )
    in_prefix = pl.when(pl.col("_total") > 0).then(pl.col("_before") / pl.col("_total") < cfg.top_mass).otherwise(False)
    lf = lf.with_columns(_prefix=in_prefix, _ok=_consistency_ok(cfg))
    rule_keeps = pl.col("_prefix") & pl.col("_ok")
    c = pl.col("_c")
    why = (
        pl.when(pl.col("_short")).then(pl.lit("short_sample"))
        .when(rule_keeps).then(pl.lit("top_mass"))
        .when(pl.col("_keep")).then(pl.lit("always_keep"))
        .when(~pl.col("_prefix")).then(pl.lit("below_top_mass"))
        .when(c.is_null()).then(pl.lit("null_consistency"))
        .when(pl.lit(cfg.max_consistency is not None) & (c > (cfg.max_consistency or 0.0))).then(pl.lit("too_consistent"))
        .otherwise(pl.lit("not_consistent_enough"))
    )
    # The attribution's flag, where the segments table has it (the adaptive rule).
    borderline = (pl.col("borderline").fill_null(False) if "borderline" in lf.collect_schema().names()
                  else pl.lit(False))
    return (
        lf.with_columns(train=pl.col("_short") | rule_keeps | pl.col("_keep"), why=why, borderline=borderline)
        .select(MASKS_COLUMNS)
        .sort([SID, "segment"])
    )


def decide(strength: np.ndarray, consistency: list[float | None], cfg: SelectConfig,
           train_tokens: int | None = None) -> np.ndarray:
    """The train decision of each segment of one sample: `attribution_rule` itself, on a
    one-sample table (the attribution stage's stop test calls this, never a copy)."""
    c = np.array([np.nan if x is None else x for x in consistency], dtype=np.float64)
    return decide_many(np.asarray(strength, dtype=np.float64)[None, :], c[None, :], cfg, train_tokens)[0]


def decide_many(strength: np.ndarray, consistency: np.ndarray, cfg: SelectConfig,
                train_tokens: int | None = None) -> np.ndarray:
    """`decide` for S variants of one sample at once ([S, n] strengths and consistencies, NaN =
    null consistency) -> [S, n] decisions: one query for all of them (the error margins of the
    adaptive rule ask for several variants per segment)."""
    strength = np.asarray(strength, dtype=np.float64)
    k, n = strength.shape
    ids = np.repeat(np.arange(k), n).astype(str)
    cons = pl.Series(np.asarray(consistency, dtype=np.float64).ravel()).fill_nan(None)
    lf = pl.LazyFrame({
        SID: ids, "segment": pl.Series(np.tile(np.arange(n), k), dtype=pl.Int32), "char_start": np.zeros(k * n, np.int32),
        "char_end": np.zeros(k * n, np.int32), "n_tokens": np.zeros(k * n, np.int32),
        "strength": pl.Series(strength.ravel(), dtype=pl.Float64), "consistency": cons,
    })
    samples = None if train_tokens is None else pl.LazyFrame(
        {SID: np.arange(k).astype(str), "n_tokens": [train_tokens] * k, "train_tokens": [train_tokens] * k})
    out = attribution_rule(lf, cfg, samples).collect()
    # The rule sorts by sample id as text ("10" < "2"): put the variants back in their order.
    order = np.argsort(out[SID].cast(pl.Int64).to_numpy()[::n], kind="stable")
    return out["train"].to_numpy().astype(bool).reshape(k, n)[order]
