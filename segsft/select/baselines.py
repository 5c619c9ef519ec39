"""The comparison methods for ablations, with the same mask columns as the rule.

- full: every segment trained (the full-trace SFT baseline), why=full.
- random: per sample, the segments in a seeded random order; the rule's kept tokens T are the
  budget. Every segment that fits wholly within T is taken; the one that crosses T is taken
  when that lands closer to T than stopping before it (ties: taken). So the tokens kept differ
  from T by at most half the crossing segment ("within one segment") with no bias up or down,
  and T = 0 keeps nothing. Short samples stay trained in full (why=short_sample), as in the rule.
  The order of a sample's segments depends only on (seed, sample_id, segment index):
  a BLAKE2b hash of (seed, sample_id) per sample, mixed with the index by SplitMix64,
  so the choice is reproducible across runs, machines and Polars versions, and does not
  change when other samples are added.
- score: per sample, the segments ranked by a per-segment column (`select.score`, e.g. the cheap
  signals nll_mean, entropy_mean, gxi_abs_sum; `select.order=high|low`, nulls last, ties by
  index), filled to the same budget T the same way. The `always_keep` segments are kept first
  and count against T; short samples stay trained in full. why: score_rank for the ranked
  segments (kept or not), always_keep, short_sample.
"""

from __future__ import annotations

import hashlib

import polars as pl

from segsft.schemas import MASKS_COLUMNS
from segsft.method.rule import SID, always_keep

_U64 = pl.UInt64
_GOLDEN = 0x9E3779B97F4A7C15
_MIX1 = 0xBF58476D1CE4E5B9
_MIX2 = 0x94D049BB133111EB


def full_mask(segments: pl.LazyFrame) -> pl.LazyFrame:
    return (segments.with_columns(train=pl.lit(True), why=pl.lit("full"), borderline=pl.lit(False))
            .select(MASKS_COLUMNS).sort([SID, "segment"]))


def sample_keys(sample_ids: pl.Series, seed: int) -> pl.DataFrame:
    """A 64-bit key per sample from BLAKE2b(seed, sample_id): one hash per sample, not per row."""
    keys = [int.from_bytes(hashlib.blake2b(f"{seed}\x00{s}".encode(), digest_size=8).digest(), "little")
            for s in sample_ids.to_list()]
    return pl.DataFrame({SID: sample_ids, "_skey": pl.Series(keys, dtype=_U64)})


def _lit(x: int) -> pl.Expr:
    return pl.lit(x, dtype=_U64)


def _shr(e: pl.Expr, bits: int) -> pl.Expr:
    return e // _lit(1 << bits)  # logical right shift of an unsigned integer


def splitmix64(x: pl.Expr) -> pl.Expr:
    """SplitMix64's finaliser on UInt64 (Polars integer arithmetic wraps, as the algorithm needs)."""
    z = x + _lit(_GOLDEN)
    z = z.xor(_shr(z, 30)) * _lit(_MIX1)
    z = z.xor(_shr(z, 27)) * _lit(_MIX2)
    return z.xor(_shr(z, 31))


def random_mask(rule_mask: pl.LazyFrame, keys: pl.LazyFrame) -> pl.LazyFrame:
    """Random segments per sample matching the tokens `rule_mask` trains (see the module doc).

    `rule_mask` is the attribution rule's output; `keys` is `sample_keys(...)` of its samples.
    """
    target = (pl.col("n_tokens").cast(pl.Int64) * pl.col("train").cast(pl.Int64)).sum().over(SID)
    order = splitmix64(pl.col("_skey") + (pl.col("segment").cast(_U64) + _lit(1)) * _lit(_GOLDEN))
    lf = (rule_mask.join(keys, on=SID, how="left")
          .with_columns(_target=target, _short=pl.col("why") == "short_sample", _order=order)
          .sort([SID, "_order", "segment"])
          .with_columns(_before=pl.col("n_tokens").cast(pl.Int64).cum_sum().shift(1, fill_value=0).over(SID)))
    drawn = _fill(pl.col("_before"), pl.col("n_tokens").cast(pl.Int64), pl.col("_target"))
    return (lf.with_columns(train=pl.col("_short") | drawn,
                            why=pl.when(pl.col("_short")).then(pl.lit("short_sample")).otherwise(pl.lit("random")),
                            borderline=pl.lit(False))  # the flag speaks of the rule's decisions only
            .select(MASKS_COLUMNS).sort([SID, "segment"]))


def _fill(before: pl.Expr, size: pl.Expr, target: pl.Expr) -> pl.Expr:
    """Take a segment while the running total is below `target`; the crossing one when that
    lands closer to it (ties: taken)."""
    after = before + size
    return (before < target) & ((after <= target) | (after - target <= target - before))


def score_mask(rule_mask: pl.LazyFrame, scores: pl.LazyFrame, keep: tuple[int, ...], high: bool) -> pl.LazyFrame:
    """The best-ranked segments per sample up to the rule's kept tokens (see the module doc).

    `rule_mask`: the attribution rule's output; `scores`: sample_id, segment, _score."""
    tokens = pl.col("n_tokens").cast(pl.Int64)
    lf = (rule_mask.join(scores, on=[SID, "segment"], how="left")
          .with_columns(_target=(tokens * pl.col("train").cast(pl.Int64)).sum().over(SID),
                        _short=pl.col("why") == "short_sample", _keep=always_keep(keep),
                        _score=pl.col("_score").fill_nan(None)))
    lf = lf.with_columns(_budget=(pl.col("_target") - (tokens * pl.col("_keep").cast(pl.Int64)).sum().over(SID)))
    # Within a sample: the kept-anyway segments first (they use no budget here), then by score.
    lf = lf.sort([SID, "_keep", "_score", "segment"], descending=[False, True, high, False], nulls_last=True)
    ranked = tokens * (~pl.col("_keep")).cast(pl.Int64)
    lf = lf.with_columns(_before=ranked.cum_sum().shift(1, fill_value=0).over(SID))
    drawn = ~pl.col("_keep") & _fill(pl.col("_before"), tokens, pl.col("_budget"))
    why = (pl.when(pl.col("_short")).then(pl.lit("short_sample"))
           .when(pl.col("_keep")).then(pl.lit("always_keep"))
           .otherwise(pl.lit("score_rank")))
    return (lf.with_columns(train=pl.col("_short") | pl.col("_keep") | drawn, why=why, borderline=pl.lit(False))
            .select(MASKS_COLUMNS).sort([SID, "segment"]))
