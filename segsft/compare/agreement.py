"""How far selection methods agree: per sample, the Jaccard overlap of the kept segments of two
selections and the Spearman correlation of the per-segment scores they rank by; then the mean
and median over the samples both cover."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from segsft.errors import PipelineError
from segsft.store.attribution_tables import AttributionTables
from segsft.store.io import parquet_columns
from segsft.store.layout import SelectionLayout
from segsft.method.adaptive import spearman
from segsft.schemas import AGREEMENT_SCHEMA, SID


@dataclass(frozen=True)
class SelectionRanking:
    """A finished selection as compare sees it: its method and the score column it ranks by."""

    name: str
    method: str
    score: str | None  # the column it ranks by (None: random, full)
    high: bool
    masks: Path


def describe(lay: SelectionLayout) -> SelectionRanking:
    """A finished selection's method and the score it ranks by, from its summary; PipelineError
    naming the file when its summary or masks cannot be read."""
    try:
        s = json.loads(lay.summary.read_text())["settings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PipelineError(f"{lay.summary} is not a select stage's summary ({type(e).__name__}: {e}): {lay.redo}") from None
    if not isinstance(s, dict) or "method" not in s:
        raise PipelineError(f"{lay.summary} is not a select stage's summary (its settings name no method): {lay.redo}")
    missing = [c for c in (SID, "segment", "train") if c not in parquet_columns(lay.masks, lay.redo)]
    if missing:
        raise PipelineError(f"{lay.masks} lacks column(s) {missing}: {lay.redo}")
    method = s["method"]
    score = {"attribution": "strength", "score": s.get("score")}.get(method)
    return SelectionRanking(lay.dir.name, method, score, s.get("order", "high") == "high", lay.masks)


def jaccard(a: SelectionRanking, b: SelectionRanking) -> pl.DataFrame:
    """sample_id, jaccard over the samples both selections cover."""
    ma = pl.scan_parquet(a.masks).select(SID, "segment", pl.col("train").alias("ta"))
    mb = pl.scan_parquet(b.masks).select(SID, "segment", pl.col("train").alias("tb"))
    both = ma.join(mb, on=[SID, "segment"], how="inner")
    inter = (pl.col("ta") & pl.col("tb")).sum()
    union = (pl.col("ta") | pl.col("tb")).sum()
    return (both.group_by(SID).agg(_i=inter, _u=union)
            .select(SID, jaccard=pl.when(pl.col("_u") == 0).then(1.0).otherwise(pl.col("_i") / pl.col("_u")))
            .collect())


def rank_correlation(a: SelectionRanking, b: SelectionRanking, tables: AttributionTables) -> pl.DataFrame:
    """sample_id, rho: the package's one spearman (segsft.method.adaptive) of the two scores over
    the segments of each sample both score; null where it is undefined (fewer than two segments
    or a constant score)."""
    cols = tuple(dict.fromkeys((a.score, b.score)))
    seg = (tables.scan_segments((SID, "segment", *cols))
           .select(SID, _sa=pl.col(a.score).fill_nan(None) * (1 if a.high else -1),
                   _sb=pl.col(b.score).fill_nan(None) * (1 if b.high else -1))
           .drop_nulls(["_sa", "_sb"])  # segments both score, then ranks among them
           .collect())
    rows = [{SID: key[0], "rho": spearman(g["_sa"].to_numpy(), g["_sb"].to_numpy())}
            for key, g in seg.group_by(SID, maintain_order=True)]
    return pl.DataFrame(rows, schema={SID: pl.String, "rho": pl.Float64})


def agreement(selections: list[SelectionRanking], tables: AttributionTables) -> pl.DataFrame:
    """One row per pair (AGREEMENT_SCHEMA)."""
    rows: list[dict[str, Any]] = []
    for a, b in itertools.combinations(sorted(selections, key=lambda s: s.name), 2):
        j = jaccard(a, b)["jaccard"]
        row = {"a": a.name, "b": b.name, "method_a": a.method, "method_b": b.method, "score_a": a.score,
               "score_b": b.score, "samples": len(j), "jaccard_mean": j.mean(), "jaccard_median": j.median(),
               "spearman_samples": 0, "spearman_mean": None, "spearman_median": None}
        if a.score and b.score:
            rho = rank_correlation(a, b, tables)["rho"].drop_nulls()
            row.update(spearman_samples=len(rho), spearman_mean=rho.mean(), spearman_median=rho.median())
        rows.append(row)
    return pl.DataFrame(rows, schema=pl.from_arrow(AGREEMENT_SCHEMA.empty_table()).schema)


def show(table: pl.DataFrame) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}"

    lines = [f"{'a':<34} {'b':<34} {'samples':>7} {'jaccard mean/median':>20} {'spearman mean/median':>21}"]
    for r in table.iter_rows(named=True):
        lines.append(f"{r['a'][:34]:<34} {r['b'][:34]:<34} {r['samples']:>7} "
                     f"{f(r['jaccard_mean']):>10}/{f(r['jaccard_median']):<9} "
                     f"{f(r['spearman_mean']):>10}/{f(r['spearman_median']):<10}")
    return "\n".join(lines)
