"""Find and validate the attribution tables of a run before anything is read (shared by the
select stage and the report).

The attribution stage writes each part's tables, then its marker; an unfinished part leaves
chunks in its partial directory (names: segsft.store.layout). A run is complete when every part of
at least one world size is finished. Reruns with another world size skip the samples that
finished parts hold, so the finished parts of every world size together hold each sample;
where two hold the same sample (a consolidation cut short, two launches at once) the first part
in name order is read, so each sample is read exactly once. Only file names and Parquet footers
are read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from segsft.errors import PipelineError
from segsft.store.layout import ATTRIBUTION_TABLES, RunLayout, parse_part, part_name
from segsft.schemas import (REJECTS_SCHEMA, REQUIRED, SAMPLES_SCHEMA, SEGMENTS_SCHEMA, SELECT_OPTIONAL_SAMPLE_COLUMNS,
                            SELECT_SAMPLE_COLUMNS, SELECT_SEGMENT_COLUMNS, SID)



class AttributionNotReady(PipelineError):
    """The attribution tables are missing, incomplete or malformed; the message says what to run."""


class AttributionDamaged(AttributionNotReady):
    """A finished part's table cannot be read: damaged after it was written (not a part still running)."""


@dataclass(frozen=True)
class AttributionTables:
    """The finished part files of a complete attribution run, in part order."""

    dir: Path
    segments: tuple[Path, ...]
    samples: tuple[Path, ...]
    rejects: tuple[Path, ...] = ()
    #: What was left aside (unfinished parts of an incomplete world size), for the log.
    notes: tuple[str, ...] = ()

    @property
    def mixed(self) -> bool:
        """Parts of more than one world size: a sample may be in two of them."""
        return len({parse_part(_part_of(p))[1] for p in self.samples}) > 1

    def scan_samples(self, required: Iterable[str] = SELECT_SAMPLE_COLUMNS,
                     optional: Iterable[str] = SELECT_OPTIONAL_SAMPLE_COLUMNS) -> pl.LazyFrame:
        """The samples tables (optional columns null where a part lacks them), each sample once."""
        if not self.mixed:
            return scan_samples(self.samples, required, optional)
        return self.winners(required, optional).drop(_PART)

    def scan_segments(self, columns: Iterable[str] = SELECT_SEGMENT_COLUMNS, optional: Iterable[str] = ()) -> pl.LazyFrame:
        """The segments tables; of a sample in two parts, the rows of the part its samples row is
        read from. `optional` columns read as null from a file that lacks them."""
        columns, optional = list(columns), list(optional)
        if not self.mixed and not optional:
            return pl.scan_parquet(list(self.segments)).select(columns)
        read = columns if SID in columns else [SID, *columns]  # the join needs the id
        frames = [_scan(p, read, optional, SEGMENTS_SCHEMA).with_columns(pl.lit(i).alias(_PART))
                  for i, p in enumerate(self.segments)]
        out = pl.concat(frames, how="vertical_relaxed")
        if self.mixed:
            keep = self.winners((SID,), ()).select(SID, _PART)
            out = out.join(keep, on=[SID, _PART], how="semi")
        return out.select(*columns, *optional)

    def scan_rejects(self, columns: Iterable[str] = (SID, "reason", "source", "row")) -> pl.LazyFrame:
        """The rejects tables: each id once, and none that a part scored."""
        columns = list(columns)
        if not self.rejects:
            return pl.from_arrow(REJECTS_SCHEMA.empty_table()).lazy().select(columns)
        lf = pl.concat([pl.scan_parquet(p).select(columns) for p in self.rejects])
        if not self.mixed:
            return lf
        scored = pl.concat([pl.scan_parquet(p).select(SID) for p in self.samples])
        return lf.unique(SID, keep="first", maintain_order=True).join(scored, on=SID, how="anti")

    def winners(self, required: Iterable[str], optional: Iterable[str]) -> pl.LazyFrame:
        """Samples rows with the index of their part (the segments files share the order), the first part's kept."""
        frames = [scan_samples([p], required, optional).with_columns(pl.lit(i).alias(_PART))
                  for i, p in enumerate(self.samples)]
        return pl.concat(frames, how="vertical_relaxed").unique(SID, keep="first", maintain_order=True)


_PART = "__part"


def _part_of(path: Path) -> str:
    return path.name.split("-", 1)[1].removesuffix(".parquet")


def _scan(path: Path, required: Iterable[str], optional: Iterable[str], schema: Any) -> pl.LazyFrame:
    """`required` and `optional` columns of one file; an optional column it lacks (written before
    the column existed) reads as null of its schema type."""
    dtypes = pl.from_arrow(schema.empty_table()).schema
    names = pq.read_schema(path).names
    cols = [pl.col(c) if c in names else pl.lit(None, dtype=dtypes[c]).alias(c) for c in optional]
    return pl.scan_parquet(path).select(*required, *cols)


def scan_samples(paths: Iterable[Path], required: Iterable[str], optional: Iterable[str]) -> pl.LazyFrame:
    """`required` and `optional` columns of samples tables (optional ones null where a file lacks them)."""
    return pl.concat([_scan(p, required, optional, SAMPLES_SCHEMA) for p in paths], how="vertical_relaxed")


def _resume_hint(run_dir: Path, world: int | None) -> str:
    launcher = f" under torchrun --nproc_per_node {world}" if world and world > 1 else ""
    return (f"run `python pipeline.py stage=attribute run_dir={run_dir}`{launcher} again: it resumes the unfinished "
            "parts and marks them done")


def _split(name: str) -> tuple[int, int]:
    return parse_part(name)


def open_attribution(run_dir: str | Path) -> AttributionTables:
    """The attribution tables under `run_dir/attribution`, or AttributionNotReady saying what to do."""
    run_dir = Path(run_dir)
    lay = RunLayout(run_dir).attribution
    adir = lay.dir
    if not lay.exists():
        what = "does not exist" if not adir.is_dir() else f"holds no {Path(lay.pattern('segments')).name}"
        raise AttributionNotReady(
            f"{adir} {what}: run `python pipeline.py stage=attribute run_dir={run_dir}` first (or point "
            "run_dir=... to a run that has the attribution tables)."
        )
    all_files = lay.table_files()
    markers = lay.markers()
    partial = lay.partial_parts()
    parts = sorted(set(all_files["segments"]) | set(all_files["samples"]) | markers | set(partial))
    finished = set(lay.finished_parts())  # marker + tables (the runner's rule too)
    by_world: dict[int, list[str]] = {}
    for p in parts:
        by_world.setdefault(_split(p)[1], []).append(p)
    complete = [w for w, ps in by_world.items()
                if all(part_name(r, w) in finished for r in range(w))]
    problems, notes = [], []
    for p in sorted(finished & set(partial)):
        # Killed while removing the chunks of a finished part: they are all in its tables.
        notes.append(f"{lay.partial(p)} is left over from finished part {p} (its chunks are in its tables): delete it")
    for w, ps in sorted(by_world.items()):
        missing = [part_name(r, w) for r in range(w) if part_name(r, w) not in parts]
        unfinished = [p for p in ps if p not in finished]
        if w in complete:
            continue
        what = []
        if missing:
            what.append(f"parts {missing} have no files yet")
        for p in unfinished:
            if p in partial and p not in markers:
                what.append(f"part {p} has unfinished chunks in {lay.partial(p)}")
            elif p not in markers:
                what.append(f"part {p} has no completion marker {lay.marker(p).name}")
            else:
                lacking = [lay.table(t, p).name for t in ATTRIBUTION_TABLES if p not in all_files[t]]
                what.append(f"part {p} is marked done but lacks {lacking}")
        if complete:
            # Another world size covers every row: this one's unfinished parts are not needed.
            notes += [f"{x} (world size {w}): ignored, the finished parts cover every row; delete it" for x in what]
        else:
            problems += [f"{x} (world size {w})" for x in what]
    world = max(by_world) if by_world else None
    if problems:
        raise AttributionNotReady(_listed(f"the attribution under {adir} is not complete", problems,
                                          f"To finish it, {_resume_hint(run_dir, world)}."))
    files = {t: {p: f for p, f in all_files[t].items() if p in finished} for t in ATTRIBUTION_TABLES}

    bad, unreadable = [], []
    for table in ATTRIBUTION_TABLES:
        for part, path in sorted(files[table].items()):
            try:
                schema = pq.read_schema(path)
            except (OSError, pa.ArrowException) as e:  # cut short, overwritten, or not a file
                unreadable.append((path, part, str(e).splitlines()[0]))
                continue
            if table not in REQUIRED:
                continue
            need = REQUIRED[table]
            missing = [c for c in need if c not in schema.names]
            wrong = [f"{c} is {schema.field(c).type}, expected {t}" for c, t in need.items()
                     if c in schema.names and schema.field(c).type != t]
            if missing:
                bad.append(f"{path} lacks column(s) {missing}")
            if wrong:
                bad.append(f"{path}: {'; '.join(wrong)}")
    if unreadable:
        markers = ", ".join(lay.marker(p).name for p in sorted({part for _, part, _ in unreadable}))
        raise AttributionDamaged(_listed(
            "attribution tables that are not readable Parquet files", [f"{path} ({why})" for path, _, why in unreadable],
            f"Delete them with the completion markers of their parts ({markers}) and run "
            f"`python pipeline.py stage=attribute run_dir={run_dir}` again: it recomputes those parts only."))
    if bad:
        raise AttributionNotReady(_listed(
            "attribution tables without the columns selection reads", bad,
            "They were not written by this version of the attribution stage: move them away and run "
            f"`python pipeline.py stage=attribute run_dir={run_dir}` again."))
    return AttributionTables(adir, *(tuple(p for _, p in sorted(files[t].items())) for t in ATTRIBUTION_TABLES),
                             notes=tuple(notes))


def _listed(head: str, items: list[str], remedy: str) -> str:
    """One problem: one line (head, the problem, what to do). Several: listed under the head."""
    if len(items) == 1:
        return f"{head}: {items[0]}. {remedy}"
    return f"{head}:\n  - " + "\n  - ".join(items) + f"\n{remedy}"
