"""Figures of a mask: per sample, overall, and by reason (`why`)."""

from __future__ import annotations

import polars as pl

from segsft.method.rule import SID


def _share(num: str, den: str) -> pl.Expr:
    # null rather than NaN when there is nothing to share
    return pl.when(pl.col(den) > 0).then(pl.col(num) / pl.col(den)).otherwise(None)


def per_sample(masks: pl.DataFrame) -> pl.DataFrame:
    """One row per sample: segments and tokens, kept and in all, and their shares."""
    tok = pl.col("n_tokens").cast(pl.Int64)
    return (
        masks.lazy().group_by(SID)
        .agg(
            n_segments=pl.len().cast(pl.Int32),
            segments_kept=pl.col("train").sum().cast(pl.Int32),
            n_tokens=tok.sum(),
            tokens_kept=tok.filter(pl.col("train")).sum(),
            short_sample=(pl.col("why") == "short_sample").any(),
        )
        .with_columns(share_segments_kept=_share("segments_kept", "n_segments"),
                      share_tokens_kept=_share("tokens_kept", "n_tokens"))
        .select(SID, "n_segments", "segments_kept", "n_tokens", "tokens_kept",
                "share_segments_kept", "share_tokens_kept", "short_sample")
        .sort(SID)
        .collect()
    )


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def overall(masks: pl.DataFrame, samples: pl.DataFrame) -> dict:
    """Totals over every sample, the spread of the per-sample token share, and counts by why."""
    segs, kept = masks.height, int(masks["train"].sum())
    tokens = int(samples["n_tokens"].sum()) if samples.height else 0
    tokens_kept = int(samples["tokens_kept"].sum()) if samples.height else 0
    share = samples["share_tokens_kept"].drop_nulls()
    spread = ({"min": share.min(), "median": share.median(), "mean": share.mean(), "max": share.max()}
              if len(share) else None)
    tok = pl.col("n_tokens").cast(pl.Int64)
    by_why = (masks.group_by("why").agg(segments=pl.len(), tokens=tok.sum(), trained=pl.col("train").sum())
              .sort("why").to_dicts())
    return {
        "overall": {
            "samples": samples.height,
            "segments": segs,
            "segments_kept": kept,
            "share_segments_kept": _ratio(kept, segs),
            "tokens": tokens,
            "tokens_kept": tokens_kept,
            "share_tokens_kept": _ratio(tokens_kept, tokens),
            "short_samples": int(samples["short_sample"].sum()) if samples.height else 0,
            "per_sample_share_tokens_kept": spread,
        },
        "by_why": {r.pop("why"): {k: int(v) for k, v in r.items()} for r in by_why},
    }
