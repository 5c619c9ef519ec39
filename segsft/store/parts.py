"""Resumable output of one rank (datatrove's protocol; the file names: segsft.store.layout).

A rank writes its part `<rank>-of-<world>` in chunks under the part's partial directory; a
chunk counts only once its samples file exists (written last), so a kill between the writes
leaves an orphan that the rerun removes. After the last flush the chunks are merged into the
part's tables, then its completion marker is written, then the chunks are removed. One OS
lock per part keeps a second writer out. Readers take finished parts only (of any world size:
segsft.store.attribution_tables), so they never see a sample twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from segsft.errors import PipelineError
from segsft.schemas import REJECTS_SCHEMA, SAMPLES_SCHEMA, SEGMENTS_SCHEMA
from segsft.store.io import write_json, write_parquet
from segsft.store.layout import AttributionLayout, PartLocks, part_name

log = logging.getLogger(__name__)

#: The attribution tables, in the order a chunk is written (samples last: it commits the chunk).
TABLES = {"segments": SEGMENTS_SCHEMA, "rejects": REJECTS_SCHEMA, "samples": SAMPLES_SCHEMA}


def keys_in(paths: list[Path]) -> set[tuple[str, int]]:
    """(sample_id, source row) of every row of samples/rejects files."""
    keys: set[tuple[str, int]] = set()
    for p in paths:
        t = _read_columns(p, ["sample_id", "row"])
        keys.update(zip(t.column("sample_id").to_pylist(), t.column("row").to_pylist()))
    return keys


def _damaged(path: Path, e: BaseException) -> PipelineError:
    # Every write here is atomic, so an unreadable file was damaged after it was written.
    return PipelineError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0]}): delete it (and its part's "
                         "completion marker, if it has one) and rerun: the rows it held are made again")


def _read_columns(path: Path, columns: list[str]) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as e:
        raise _damaged(path, e) from None


def has_key(keys: set[tuple[str, int]], item: Any) -> bool:
    return (item.sample_id, item.row) in keys


@dataclass
class Buffer:
    segments: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples) + len(self.rejects)


class PartWriter:
    """Chunked, atomic, resumable output of one rank (the file names: segsft.store.layout)."""

    def __init__(self, out_dir: Path, rank: int, world: int):
        self.layout = AttributionLayout(out_dir)
        self.part = part_name(rank, world)
        self.partial = self.layout.partial(self.part)
        self.marker = self.layout.marker(self.part)
        self.reuse_finals = False

    def final(self, table: str) -> Path:
        return self.layout.table(table, self.part)

    def committed_chunks(self) -> list[int]:
        return self.layout.committed_chunks(self.part)

    def prepare(self) -> tuple[set[tuple[str, int]], set[tuple[str, int]]]:
        """Remove orphans of an interrupted flush; return the (sample_id, row) keys in this part's
        committed chunks and those that finished parts of other world sizes hold: neither is
        computed again."""
        self.partial.mkdir(parents=True, exist_ok=True)
        committed = set(self.committed_chunks())
        for chunk, files in self.layout.chunks(self.part).items():
            if chunk not in committed:
                for p in files.values():
                    log.warning("removing %s: its chunk was interrupted before it was committed", p)
                    p.unlink()
        for p in self.partial.glob(".*.tmp"):
            p.unlink()
        mine = keys_in([self.layout.chunk(self.part, t, c) for c in committed for t in ("samples", "rejects")])
        # Killed after its merged tables were written (samples last) but before the marker:
        # the tables hold every chunk; keep them rather than redo their samples.
        self.reuse_finals = not committed and all(self.final(t).is_file() for t in TABLES)
        if self.reuse_finals:
            mine |= keys_in([self.final(t) for t in ("samples", "rejects")])
        # Finished parts only: an unfinished one of another world size may never be finished.
        others = [p for p in self.layout.finished_parts() if p != self.part]
        elsewhere = keys_in([self.layout.table(t, p) for p in others for t in ("samples", "rejects")])
        stale = [d for d in self.layout.partial_parts() if d != self.part]
        if stale:
            log.warning(
                "unfinished parts of another world size %s are ignored; their samples are redone here "
                "(delete them once every part of this run is done)", stale,
            )
        return mine, elsewhere

    def flush(self, buf: Buffer) -> None:
        if not len(buf):
            return
        chunk = (self.committed_chunks() or [-1])[-1] + 1
        for table, schema in TABLES.items():  # samples last: it commits the chunk
            write_parquet(self.layout.chunk(self.part, table, chunk), getattr(buf, table), schema)
        buf.segments.clear()
        buf.samples.clear()
        buf.rejects.clear()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Merge the chunks into the part files, then mark the part complete."""
        chunks = self.committed_chunks()
        for table, schema in TABLES.items():
            paths = [self.layout.chunk(self.part, table, c) for c in chunks]
            if self.reuse_finals:
                paths.insert(0, self.final(table))
            merged = pa.concat_tables([pq.read_table(p, schema=schema) for p in paths]) if paths else schema.empty_table()
            write_parquet(self.final(table), merged, schema)
        write_json(self.marker, dict(summary))
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the chunks of a complete part (they are all in its part files)."""
        if self.partial.exists():
            shutil.rmtree(self.partial)
        try:
            self.layout.partial_root.rmdir()
        except OSError:
            pass


class PartBusy(PipelineError):
    """Another live process writes this part of the run dir."""


@contextlib.contextmanager
def part_lock(layout: PartLocks, part: str) -> Iterator[None]:
    """Hold the OS lock of one part (per rank and world size) for the whole run. The OS
    releases it when the process dies, so a killed run never blocks its rerun; a second live
    writer is refused in one line naming the holder."""
    from filelock import FileLock, Timeout

    layout.dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.lock(part)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            who = json.loads(layout.lock_holder(part).read_text())
            holder = f"PID {who.get('pid')} on host {who.get('host')}"
        except (OSError, ValueError):
            holder = "another process"
        raise PartBusy(f"part {part} of {layout.dir} is being written by {holder}: wait for it to finish or stop "
                       "it; two writers of one part would lose rows") from None
    try:
        write_json(layout.lock_holder(part), {"pid": os.getpid(), "host": socket.gethostname(),
                                              "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        yield
    finally:
        layout.lock_holder(part).unlink(missing_ok=True)
        lock.release()


class ChunkWriter:
    """Numbered chunk files of one part, each written atomically and holding whole units of
    work (generate/evaluate: every sample of its problems), so a kill loses only the unit in
    flight and a rerun skips the units any chunk holds (`chunk_keys`)."""

    def __init__(self, path: Callable[[int], Path], existing: int):
        self.path, self.next = path, existing

    def write(self, rows: list[dict], schema: pa.Schema) -> Path:
        out = self.path(self.next)
        write_parquet(out, rows, schema)
        self.next += 1
        return out


def chunk_keys(paths: Iterable[Path], columns: Sequence[str]) -> set[tuple]:
    """The values of `columns` of every row of the chunks."""
    keys: set[tuple] = set()
    for p in paths:
        t = _read_columns(p, list(columns))
        keys.update(zip(*(t.column(c).to_pylist() for c in columns)))
    return keys


def read_chunks(paths: Sequence[Path], schema: pa.Schema, unique: Sequence[str]) -> Any:
    """Every chunk's rows, each `unique` key once, the first chunk's winning (a Polars frame)."""
    import polars as pl

    if not paths:
        return pl.from_arrow(schema.empty_table())
    frames = []
    for p in paths:
        try:
            frames.append(pl.read_parquet(p))
        except (OSError, pl.exceptions.PolarsError) as e:
            raise _damaged(p, e) from None
    return (pl.concat(frames, how="vertical_relaxed")
            .unique(list(unique), keep="first", maintain_order=True))
