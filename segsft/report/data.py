"""What the report shows, read and joined with Polars: attribution tables, selections, sweep, corpus.

Large columns stay on disk until needed: `token_attr` is read only for the traces shown.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from segsft.layout import RunLayout, SelectionLayout
from segsft.report.config import ReportError
from segsft.schemas import ADAPTIVE_SAMPLE_COLUMNS, REPORT_SAMPLE_COLUMNS, REPORT_SEGMENT_COLUMNS
from segsft.attribution_tables import AttributionNotReady, open_attribution, scan_samples

SID = "sample_id"


@dataclass(frozen=True)
class Attribution:
    """One complete attribution run; `segments` without `token_attr`."""

    dir: Path
    segment_parts: tuple[Path, ...]
    segments: pl.DataFrame
    samples: pl.DataFrame
    rejects: pl.DataFrame

    def token_attr(self, sample_ids: Iterable[str]) -> dict[tuple[str, int], list[float]]:
        """The raw a_t of every segment of `sample_ids`, by (sample_id, segment)."""
        ids = list(sample_ids)
        df = (pl.scan_parquet(list(self.segment_parts)).filter(pl.col(SID).is_in(ids))
              .select(SID, "segment", "token_attr").collect())
        return {(s, k): v for s, k, v in df.iter_rows()}


def _lacking(paths: Iterable[Path], columns: Iterable[str]) -> list[str]:
    out = []
    for p in paths:
        names = pq.read_schema(p).names
        missing = [c for c in columns if c not in names]
        if missing:
            out.append(f"{p} lacks {missing}")
    return out


def load_attribution(run_dir: str | Path) -> Attribution:
    """The attribution of `run_dir`, or ReportError saying what to run."""
    run_dir = Path(run_dir)
    lay = RunLayout(run_dir).attribution
    adir = lay.dir
    if not lay.exists():
        raise ReportError(
            f"{adir} {'does not exist' if not adir.is_dir() else 'holds no ' + Path(lay.pattern('segments')).name}: the report shows "
            f"a run's attribution. Run `make attribute RUN_DIR={run_dir}` first, or point run_dir=... to a run that has one."
        )
    try:
        tables = open_attribution(run_dir)
    except AttributionNotReady as e:
        raise ReportError(f"the report reads the attribution under {adir}, which is not ready: {e}") from e
    rejects = lay.finished("rejects")
    bad = (_lacking(tables.segments, (*REPORT_SEGMENT_COLUMNS, "token_attr")) + _lacking(tables.samples, REPORT_SAMPLE_COLUMNS)
           + _lacking([p for p in rejects if p.is_file()], (SID, "reason")))
    if bad:
        raise ReportError("attribution tables without the columns the report reads:\n  - " + "\n  - ".join(bad)
                          + f"\nRerun `make attribute RUN_DIR={run_dir}` with this version into a fresh run_dir.")
    segments = pl.scan_parquet(list(tables.segments)).select(REPORT_SEGMENT_COLUMNS).sort(SID, "segment").collect()
    samples = scan_samples(tables.samples, REPORT_SAMPLE_COLUMNS, ADAPTIVE_SAMPLE_COLUMNS).sort(SID).collect()
    present = [p for p in rejects if p.is_file()]
    rej = (pl.scan_parquet(present).select(SID, "reason").collect() if present
           else pl.DataFrame(schema={SID: pl.String, "reason": pl.String}))
    return Attribution(adir, tables.segments, segments, samples, rej)


# ---- selections ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """One selection directory: its settings (from config.yaml) and its kept shares (from masks)."""

    dir: Path
    settings: dict
    run_dir: str | None
    segments: int
    segments_kept: int
    tokens: int
    tokens_kept: int
    job: int | None = None

    @property
    def name(self) -> str:
        return self.dir.name

    @property
    def share_segments(self) -> float | None:
        return self.segments_kept / self.segments if self.segments else None

    @property
    def share_tokens(self) -> float | None:
        return self.tokens_kept / self.tokens if self.tokens else None

    def masks(self) -> pl.DataFrame:
        return pl.read_parquet(SelectionLayout(self.dir).masks)


def read_selection(d: str | Path, run_dir: str | Path) -> Selection:
    """What the select stage wrote about one selection: its settings (every one, seed
    included) and its counts, from its summary; nothing is recounted."""
    sel = SelectionLayout(Path(d))
    if not sel.masks.is_file():
        raise ReportError(f"{sel.dir} holds no {sel.masks.name}: run `make select RUN_DIR={run_dir}` to make a selection, "
                          "or set report.selection=<a selection directory> (null = every one under run_dir/selection)")
    if not sel.finished() or not sel.summary.is_file():
        raise ReportError(f"{sel.dir} has no {sel.config.name} or {sel.summary.name}: the selection is unfinished; "
                          f"run `make select RUN_DIR={run_dir}` with its settings again")
    summary = json.loads(sel.summary.read_text())
    o = summary["overall"]
    return Selection(sel.dir, dict(summary["settings"]), summary.get("run_dir"),
                     segments=int(o["segments"]), segments_kept=int(o["segments_kept"]),
                     tokens=int(o["tokens"]), tokens_kept=int(o["tokens_kept"]))


def _same(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def _sweep_jobs(run_dir: Path) -> dict[Path, int]:
    path = RunLayout(run_dir).sweep_table
    if not path.is_file():
        return {}
    t = pl.read_parquet(path, columns=["job", "selection_dir"])
    return {Path(d).resolve(): int(j) for j, d in t.iter_rows()}


def find_selections(run_dir: str | Path, explicit: str | None, default_dir: str | None
                    ) -> tuple[list[Selection], Selection | None, list[str]]:
    """(the selections listed, the one shown in the traces and scatter, notes for the page)."""
    run_dir = Path(run_dir)
    notes: list[str] = []
    if explicit:
        chosen = read_selection(explicit, run_dir)
        return [chosen], chosen, notes
    layout = RunLayout(run_dir)
    root = layout.selection_root
    jobs = _sweep_jobs(run_dir)
    found = []
    for sel in layout.selections():
        d = sel.dir
        if not sel.finished():
            notes.append(f"{d} is skipped: it lacks {sel.masks.name} or {sel.config.name} (an unfinished selection)")
            continue
        try:
            s = read_selection(d, run_dir)
        except Exception as e:  # one unreadable directory should not cost the whole report
            notes.append(f"{d} is skipped: it could not be read ({type(e).__name__}: {e})")
            continue
        found.append(replace(s, job=jobs.get(d.resolve())))
    if not found:
        notes.append(f"no selection under {root}: segments are shown without trained/masked marks. "
                     f"Run `make select RUN_DIR={run_dir}` (or `make sweep`) to make one.")
        return [], None, notes
    found.sort(key=lambda s: (s.job is None, s.job or 0, s.name))
    chosen = next((s for s in found if default_dir and _same(s.dir, default_dir)), None)
    if chosen is None:
        chosen = max(found, key=lambda s: SelectionLayout(s.dir).masks.stat().st_mtime)
        if len(found) > 1:
            notes.append(f"the traces and the scatter show the newest selection, {chosen.name} "
                         "(set report.selection=<dir> to show another)")
    elif len(found) > 1:
        notes.append(f"the traces and the scatter show {chosen.name}, the selection of the current select.* "
                     "settings (set report.selection=<dir> to show another)")
    return found, chosen, notes


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
        "convergence": _convergence(smp),
        "gaps": gaps.to_numpy(),
        "rules": sorted({f"{r} x {s}" for r, s in smp.select("rule", "steps").unique().iter_rows()}),
        "models": sorted(set(smp["model"].to_list())),
    }


def _convergence(smp: pl.DataFrame) -> dict[str, Any]:
    """Gradient evaluations per sample, and the adaptive rule's stop test (None without it)."""
    steps = smp["steps_used"].drop_nulls()
    stab = smp["decision_stability"].drop_nulls()
    conv = smp["converged"].drop_nulls()
    return {
        "steps_median": float(steps.median()) if len(steps) else None,
        "steps_max": int(steps.max()) if len(steps) else None,
        "stability_median": float(stab.median()) if len(stab) else None,
        "adaptive_samples": len(conv),
        "unconverged": smp.filter(pl.col("converged") == False)[SID].to_list(),  # noqa: E712
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
