"""Atomic file writes, and the one checked read of a Parquet file's columns (the schemas of the
tables: segsft.schemas)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic(path: Path, write: Any) -> None:
    """Write through a temp file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes the file 0600; give it the mode a plain open() would (0644 under umask
        # 022), so others of a shared filesystem's group can read the results.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not e.filename:
            e.filename = str(path)  # pyarrow's "no space left" names no file: name the one being written
        raise


def write_parquet(path: str | Path, rows: Iterable[Mapping[str, Any]] | pa.Table, schema: pa.Schema) -> None:
    """Atomically write `rows` (dicts or a table) to `path` with exactly `schema`."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=schema)
    if table.schema != schema:
        table = table.cast(schema)
    _atomic(Path(path), lambda tmp: pq.write_table(table, tmp))


def write_text(path: str | Path, text: str) -> None:
    def _w(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    _atomic(Path(path), _w)


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    """The SHA-256 of a file's bytes (the fingerprints of a corpus or a masks table)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def parquet_columns(path: str | Path, redo: str) -> list[str]:
    """The column names of the Parquet file `path`, or PipelineError naming it when it cannot be
    read (cut short, 0 bytes, overwritten, a directory); `redo` says what rewrites it."""
    from segsft.errors import PipelineError

    try:
        return list(pq.read_schema(path).names)
    except (OSError, pa.ArrowException) as e:
        raise PipelineError(f"{path} is not a readable Parquet file ({str(e).splitlines()[0]}): {redo}") from None
