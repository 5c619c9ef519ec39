"""Find and validate the attribution tables of a run before anything is read (shared by the
select stage and the report).

The attribution stage writes each part's tables, then its marker; an unfinished part leaves
chunks in its partial directory (names: segsft.layout). Selection reads only complete runs:
every rank of one world size, each with its marker, no partial directory left. Only file
names and Parquet footers are read here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import polars as pl
import pyarrow.parquet as pq

from segsft.errors import PipelineError
from segsft.layout import RunLayout, parse_part
from segsft.schemas import (REQUIRED, SAMPLES_SCHEMA, SELECT_OPTIONAL_SAMPLE_COLUMNS, SELECT_SAMPLE_COLUMNS,
                            SELECT_SEGMENT_COLUMNS)



class AttributionNotReady(PipelineError):
    """The attribution tables are missing, incomplete or malformed; the message says what to run."""


@dataclass(frozen=True)
class AttributionTables:
    """The validated part files of one complete attribution run."""

    dir: Path
    segments: tuple[Path, ...]
    samples: tuple[Path, ...]

    def scan_segments(self) -> pl.LazyFrame:
        return pl.scan_parquet(list(self.segments)).select(SELECT_SEGMENT_COLUMNS)

    def scan_samples(self) -> pl.LazyFrame:
        """What selection reads of the samples tables (optional columns null where a part lacks them)."""
        return scan_samples(self.samples, SELECT_SAMPLE_COLUMNS, SELECT_OPTIONAL_SAMPLE_COLUMNS)


def scan_samples(paths: Iterable[Path], required: Iterable[str], optional: Iterable[str]) -> pl.LazyFrame:
    """`required` and `optional` columns of samples tables; an optional column a file lacks
    (one written before it existed) reads as null of its schema type."""
    dtypes = pl.from_arrow(SAMPLES_SCHEMA.empty_table()).schema
    frames = []
    for p in paths:
        names = pq.read_schema(p).names
        cols = [pl.col(c) if c in names else pl.lit(None, dtype=dtypes[c]).alias(c) for c in optional]
        frames.append(pl.scan_parquet(p).select(*required, *cols))
    return pl.concat(frames, how="vertical_relaxed")


def _resume_hint(run_dir: Path, world: int | None) -> str:
    nproc = f" NPROC={world}" if world and world > 1 else ""
    return (f"run `make attribute RUN_DIR={run_dir}{nproc}` (or `python pipeline.py stage=attribute "
            f"run_dir={run_dir}` under the same launcher) again: it resumes the unfinished parts and marks them done")


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
            f"{adir} {what}: selection reads the attribution tables. Run `make attribute RUN_DIR={run_dir}` "
            f"first (or point run_dir=... to a run that has them)."
        )
    all_files = lay.table_files()
    files = {t: all_files[t] for t in ("segments", "samples")}
    markers = lay.markers()
    partial = lay.partial_parts()
    parts = sorted(set(files["segments"]) | set(files["samples"]) | markers)
    worlds = sorted({_split(p)[1] for p in parts})

    problems = []
    if len(worlds) > 1:
        by_world = {w: [p for p in parts if _split(p)[1] == w] for w in worlds}
        problems.append(
            f"parts of {len(worlds)} different world sizes {by_world}: they would count samples twice; "
            "keep the files of one attribution run and move the others out of the directory"
        )
    world = worlds[-1] if worlds else None
    if len(worlds) == 1:
        missing = [f"{r:05d}-of-{world:05d}" for r in range(world) if f"{r:05d}-of-{world:05d}" not in parts]
        if missing:
            problems.append(f"parts {missing} have no files yet (world size {world})")
    for part in parts:
        lacking = [t for t in ("segments", "samples") if part not in files[t]]
        if part not in markers:
            problems.append(f"part {part} has no completion marker {lay.marker(part).name}")
        elif lacking:
            problems.append(f"part {part} is marked done but lacks {[lay.table(t, part).name for t in lacking]}")
    for name in partial:
        w = _split(name)[1] if "-of-" in name else None
        if world is not None and w is not None and w != world:
            # The runner leaves these when a run is redone with another world size.
            problems.append(f"{lay.partial(name)} is left over from a run of world size {w} (the parts here "
                            f"have world size {world}): delete it, or finish that run with NPROC={w}")
        else:
            problems.append(f"part {name} has unfinished chunks in {lay.partial(name)}")
    if problems:
        raise AttributionNotReady(
            f"the attribution under {adir} is not complete:\n  - " + "\n  - ".join(problems)
            + f"\nTo finish it, {_resume_hint(run_dir, world)}."
        )

    bad = []
    for table, paths in files.items():
        for part, path in sorted(paths.items()):
            schema = pq.read_schema(path)
            need = REQUIRED[table]
            missing = [c for c in need if c not in schema.names]
            wrong = [f"{c} is {schema.field(c).type}, expected {t}" for c, t in need.items()
                     if c in schema.names and schema.field(c).type != t]
            if missing:
                bad.append(f"{path} lacks column(s) {missing}")
            if wrong:
                bad.append(f"{path}: {'; '.join(wrong)}")
    if bad:
        raise AttributionNotReady(
            "attribution tables without the columns selection reads:\n  - " + "\n  - ".join(bad)
            + f"\nThey were not written by this version of the attribution stage: move them away and run "
            f"`make attribute RUN_DIR={run_dir}` again."
        )
    return AttributionTables(adir, tuple(p for _, p in sorted(files["segments"].items())),
                             tuple(p for _, p in sorted(files["samples"].items())))
