"""Loading what the report shows: the attribution tables and the selections, as the stages wrote them.

Large columns stay on disk until needed: `token_attr` is read only for the traces shown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import polars as pl
import pyarrow.parquet as pq

from segsft.store.layout import RunLayout, SelectionLayout
from segsft.report.config import ReportError
from segsft.schemas import (ADAPTIVE_SAMPLE_COLUMNS, ADAPTIVE_SEGMENT_COLUMNS, REPORT_SAMPLE_COLUMNS, REPORT_SEGMENT_COLUMNS, SID,
                            TOKEN_STAT_COLUMNS)
from segsft.store.attribution_tables import AttributionDamaged, AttributionNotReady, AttributionTables, open_attribution


@dataclass(frozen=True)
class Attribution:
    """One complete attribution run; `segments` without `token_attr`."""

    dir: Path
    tables: AttributionTables
    segments: pl.DataFrame
    samples: pl.DataFrame
    rejects: pl.DataFrame

    def token_attr(self, sample_ids: Iterable[str]) -> dict[tuple[str, int], list[float]]:
        """The raw a_t of every segment of `sample_ids`, by (sample_id, segment)."""
        ids = list(sample_ids)
        df = self.tables.scan_segments((SID, "segment", "token_attr")).filter(pl.col(SID).is_in(ids)).collect()
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
    try:
        tables = open_attribution(run_dir)
    except AttributionDamaged as e:
        raise ReportError(f"the report reads the attribution under {adir}: {e}") from e
    except AttributionNotReady as e:
        raise ReportError(f"the report reads the attribution under {adir}, which is not ready: {e}") from e
    bad = (_lacking(tables.segments, (*REPORT_SEGMENT_COLUMNS, "token_attr")) + _lacking(tables.samples, REPORT_SAMPLE_COLUMNS)
           + _lacking(tables.rejects, (SID, "reason")))
    if bad:
        raise ReportError("attribution tables without the columns the report reads:\n  - " + "\n  - ".join(bad)
                          + f"\nRerun `python pipeline.py stage=attribute run_dir={run_dir}` with this version into a fresh run_dir.")
    segments = tables.scan_segments(REPORT_SEGMENT_COLUMNS, (*TOKEN_STAT_COLUMNS, *ADAPTIVE_SEGMENT_COLUMNS)).sort(SID, "segment").collect()
    samples = tables.scan_samples(REPORT_SAMPLE_COLUMNS, ADAPTIVE_SAMPLE_COLUMNS).sort(SID).collect()
    rej = tables.scan_rejects((SID, "reason")).collect()
    return Attribution(adir, tables, segments, samples, rej)


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
        raise ReportError(f"{sel.dir} holds no {sel.masks.name}: run `python pipeline.py stage=select run_dir={run_dir}` to make a selection, "
                          "or set report.selection=<a selection directory> (null = every one under run_dir/selection)")
    if not sel.finished() or not sel.summary.is_file():
        raise ReportError(f"{sel.dir} has no {sel.marker.name} or {sel.summary.name}: the selection is unfinished; "
                          f"run `python pipeline.py stage=select run_dir={run_dir}` with its settings again")
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
            notes.append(f"{d} is skipped: it lacks {sel.masks.name}, {sel.config.name} or {sel.marker.name} "
                         "(an unfinished selection)")
            continue
        try:
            s = read_selection(d, run_dir)
        except Exception as e:  # one unreadable directory should not cost the whole report
            notes.append(f"{d} is skipped: it could not be read ({type(e).__name__}: {e})")
            continue
        found.append(replace(s, job=jobs.get(d.resolve())))
    if not found:
        notes.append(f"no selection under {root}: segments are shown without trained/masked marks. "
                     f"Run `python pipeline.py stage=select run_dir={run_dir}` to make one.")
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


def load_agreement(run_dir: str | Path) -> pl.DataFrame | None:
    """stage=compare's table of the run, or None before it ran."""
    path = RunLayout(run_dir).agreement
    return pl.read_parquet(path) if path.is_file() else None


def load_results(eval_dir: str | Path) -> pl.DataFrame | None:
    """stage=evaluate's results table, or None before it ran."""
    from segsft.store.layout import GenerationLayout

    path = GenerationLayout(Path(eval_dir)).results
    return pl.read_parquet(path) if path.is_file() else None
