"""The report's view model: joins, the overview's figures, the traces shown (no I/O but
the per-sample table of the chosen selection and token_attr of the traces shown)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from segsft.store.layout import SelectionLayout
from segsft.run.recap import convergence
from segsft.report.load import SID, Attribution, Selection


def join_masks(segments: pl.DataFrame, masks: pl.DataFrame | None) -> tuple[pl.DataFrame, list[str]]:
    """`segments` with `train` and `why` of the mask (null where the mask has no row), and notes."""
    if masks is None:
        return segments.with_columns(train=pl.lit(None, pl.Boolean), why=pl.lit(None, pl.String)), []
    m = masks.select(SID, "segment", pl.col("char_start").alias("_cs"), pl.col("char_end").alias("_ce"), "train", "why")
    out = segments.join(m, on=[SID, "segment"], how="left")
    notes = []
    missing = out.filter(pl.col("_cs").is_null()).height
    if missing:
        notes.append(f"{missing} segment(s) have no row in the selection's masks (shown unmarked): "
                     "was the selection made on another attribution?")
    moved = out.filter(pl.col("_cs").is_not_null() & ((pl.col("_cs") != pl.col("char_start"))
                                                      | (pl.col("_ce") != pl.col("char_end")))).height
    if moved:
        notes.append(f"{moved} mask row(s) have other character spans than this run's segments: "
                     "the selection was made on another attribution")
    extra = masks.join(segments, on=[SID, "segment"], how="anti").height
    if extra:
        notes.append(f"{extra} mask row(s) name segments this attribution does not have")
    return out.drop("_cs", "_ce"), notes


def sample_table(att: Attribution, selection: "Selection | None") -> pl.DataFrame:
    """One row per scored sample with its kept shares, as the select stage wrote them in its
    per-sample summary (null without a selection)."""
    s = att.samples
    if selection is None:
        return s.with_columns(share_tokens_kept=pl.lit(None, pl.Float64), share_segments_kept=pl.lit(None, pl.Float64))
    per = pl.read_parquet(SelectionLayout(selection.dir).per_sample, columns=[SID, "share_tokens_kept", "share_segments_kept"])
    return s.join(per, on=SID, how="left")


def pick_traces(samples: pl.DataFrame, max_traces: int | None) -> list[str]:
    """Sample ids by kept share (lowest first, then id); at most `max_traces`, spread evenly over
    that order so both ends of the range are shown."""
    ids = samples.sort(["share_tokens_kept", SID], nulls_last=True)[SID].to_list()
    if max_traces is None or max_traces >= len(ids):
        return ids
    if max_traces == 0:
        return []
    picks = np.unique(np.round(np.linspace(0, len(ids) - 1, max_traces)).astype(int))
    return [ids[i] for i in picks]


# ---- overview -----------------------------------------------------------------------------------

_ROW_PREFIX = re.compile(r"^row \d+: ")


def overview(att: Attribution) -> dict[str, Any]:
    """The corpus-level figures of the page's first section."""
    smp, seg = att.samples, att.segments
    per = seg.group_by(SID).agg(n=pl.len())["n"]
    gaps = smp["completeness_gap"].drop_nulls()
    reasons = (att.rejects.with_columns(pl.col("reason").str.replace(_ROW_PREFIX.pattern, ""))
               .group_by("reason").agg(n=pl.len()).sort(["n", "reason"], descending=[True, False]))
    return {
        "samples": smp.height,
        "rejects": att.rejects.height,
        "reject_reasons": reasons.head(10).rows(),
        "sequence_tokens": int(smp["n_tokens"].cast(pl.Int64).sum() or 0),
        "trace_tokens": int(seg["n_tokens"].cast(pl.Int64).sum() or 0),
        "segments": seg.height,
        "segments_per_sample": ({"mean": float(per.mean()), "min": int(per.min()), "max": int(per.max())}
                                if len(per) else None),
        "gap_quantiles": ({q: float(gaps.quantile(v, "nearest")) for q, v in
                           (("min", 0.0), ("p10", 0.1), ("median", 0.5), ("p90", 0.9), ("max", 1.0))}
                          if len(gaps) else None),
        "gap_nulls": smp.height - len(gaps),
        "convergence": convergence(smp, seg),
        "gaps": gaps.to_numpy(),
        "rules": sorted({f"{r} x {s}" for r, s in smp.select("rule", "steps").unique().iter_rows()}),
        "models": sorted(set(smp["model"].to_list())),
    }


# ---- traces -------------------------------------------------------------------------------------

@dataclass
class Trace:
    """One sample as the page shows it."""

    sample_id: str
    question: str
    answer: str
    solution: str
    segments: list[dict]  # rows of join_masks, in order, with token_attr
    share_tokens_kept: float | None
    completeness_gap: float | None
    n_tokens: int
    steps_used: int | None = None
    decision_stability: float | None = None
    converged: bool | None = None
    token_starts: list[np.ndarray] | None = None  # per segment, each token's first character
    notes: list[str] = field(default_factory=list)


def build_traces(ids: list[str], joined: pl.DataFrame, samples: pl.DataFrame, att: Attribution,
                 corpus: dict[str, Any]) -> tuple[list[Trace], list[str]]:
    """The traces of `ids` whose text is in the corpus and matches the segments' spans."""
    notes: list[str] = []
    attrs = att.token_attr(ids)
    by_id = {r[SID]: r for r in samples.filter(pl.col(SID).is_in(ids)).iter_rows(named=True)}
    rows = joined.filter(pl.col(SID).is_in(ids)).sort(SID, "segment")
    segs: dict[str, list[dict]] = {}
    for r in rows.iter_rows(named=True):
        r["token_attr"] = attrs.get((r[SID], r["segment"])) or []
        segs.setdefault(r[SID], []).append(r)
    traces, absent, mismatched = [], [], []
    for sid in ids:
        s = corpus.get(sid)
        if s is None:
            absent.append(sid)
            continue
        sg = segs.get(sid, [])
        if not sg or sg[0]["char_start"] != 0 or sg[-1]["char_end"] != len(s.solution) or any(
                a["char_end"] != b["char_start"] for a, b in zip(sg, sg[1:])):
            mismatched.append(sid)
            continue
        info = by_id[sid]
        traces.append(Trace(sid, s.question, s.answer, s.solution, sg, info["share_tokens_kept"],
                            info["completeness_gap"], int(info["n_tokens"]), info.get("steps_used"),
                            info.get("decision_stability"), info.get("converged")))
    if absent:
        notes.append(f"{len(absent)} trace(s) are not in the corpus at data.path and are not shown "
                     f"({', '.join(absent[:5])}{', ...' if len(absent) > 5 else ''}): set data.path to the corpus "
                     "the run was attributed on")
    if mismatched:
        notes.append(f"{len(mismatched)} trace(s) do not match their segments' character spans and are not shown "
                     f"({', '.join(mismatched[:5])}{', ...' if len(mismatched) > 5 else ''}): data.path holds "
                     "other text under the same ids than the run was attributed on")
    return traces, notes
