"""Atomic file writes and the explicit Parquet schemas of DESIGN.md's tables."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

SEGMENTS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("segment", pa.int32()),
        ("char_start", pa.int32()),
        ("char_end", pa.int32()),
        ("token_start", pa.int32()),
        ("token_end", pa.int32()),
        ("n_tokens", pa.int32()),
        ("attr_sum", pa.float64()),
        ("attr_abs_sum", pa.float64()),
        ("strength", pa.float64()),
        pa.field("consistency", pa.float64(), nullable=True),
        ("token_attr", pa.list_(pa.float32())),
    ]
)

SAMPLES_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("n_tokens", pa.int32()),
        # Prompt + trace: the length of the training sequence (DESIGN step 8), which
        # select.min_tokens compares against; n_tokens adds the answer suffix.
        ("train_tokens", pa.int32()),
        ("n_segments", pa.int32()),
        ("answer_logprob", pa.float64()),
        ("baseline_logprob", pa.float64()),
        ("attr_total", pa.float64()),
        ("attr_norm", pa.float64()),
        pa.field("completeness_gap", pa.float64(), nullable=True),
        ("rule", pa.string()),
        ("steps", pa.int32()),
        ("model", pa.string()),
        ("seconds", pa.float64()),
        # Gradient evaluations spent on the sample (every rule); for attribute.rule=adaptive
        # also the stop test: the share of train decisions unchanged at the last doubling of
        # the evaluations, and whether both targets were met (null for the fixed rules).
        ("steps_used", pa.int32()),
        pa.field("decision_stability", pa.float64(), nullable=True),
        pa.field("converged", pa.bool_(), nullable=True),
    ]
)

REJECTS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("reason", pa.string()),
        ("source", pa.string()),
        ("row", pa.int64()),
    ]
)


def _atomic(path: Path, write: Any) -> None:
    """Write through a temp file in the same directory, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
