"""`select.always_keep` indices that name no segment of a sample keep nothing there: say so."""

from __future__ import annotations

from typing import Sequence

import polars as pl


def out_of_range(mask: pl.DataFrame, always_keep: Sequence[int]) -> dict[int, int]:
    """index -> number of samples of `mask` (one row per segment) with fewer segments than it needs."""
    if mask.is_empty() or not always_keep:
        return {}
    n = mask.group_by("sample_id").agg(pl.len().alias("n"))["n"]
    out = {}
    for k in dict.fromkeys(int(k) for k in always_keep):
        miss = int(((n <= k) if k >= 0 else (n < -k)).sum())
        if miss:
            out[k] = miss
    return out


def warning(mask: pl.DataFrame, always_keep: Sequence[int]) -> str | None:
    """One line for the log, or None when every index names a segment of every sample."""
    miss = out_of_range(mask, always_keep)
    if not miss:
        return None
    total = mask["sample_id"].n_unique()
    shown = ", ".join(f"{k} in {m} of {total}" for k, m in miss.items())
    return (f"select.always_keep: index out of range ({shown} samples): it keeps nothing there; "
            "use indices within the samples' segments (negative ones count from the end)")
