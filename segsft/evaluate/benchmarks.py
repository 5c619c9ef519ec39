"""Benchmark specs -> problems: a shipped name (segsft/data/benchmarks/<name>.jsonl), a JSONL/Parquet
path, a dataset directory, or hub:<dataset id>[@<revision>][:<config>][:<split>] (segsft.store.hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from segsft.store.corpus import ProblemRow, Reject, read_problems
from segsft.store.hub import PREFIX, is_dataset
from segsft.store.hub import spec_problem as hub_spec_problem
from segsft.store.shipped import benchmarks_dir

#: The paper's sets, shipped with the package (see its README.md there for provenance).
SHIPPED_DIR = benchmarks_dir()


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.jsonl"))


def benchmark_name(spec: str) -> str:
    if spec.startswith(PREFIX):
        return spec[len(PREFIX):].replace("/", "_").replace(":", "_").replace("@", "_")
    return Path(spec).stem if ("/" in spec or spec.endswith((".jsonl", ".parquet"))) else spec


def spec_problem(spec: str) -> str | None:
    """Why `spec` cannot be a benchmark, or None."""
    if is_dataset(spec):
        return hub_spec_problem(spec, "evaluate.benchmarks")
    if (SHIPPED_DIR / f"{spec}.jsonl").is_file() or Path(spec).is_file():
        return None
    return (f"evaluate.benchmarks: {spec!r} is neither a shipped benchmark ({', '.join(shipped())}) nor an existing "
            "JSONL/Parquet file, a dataset directory or hub:<dataset id>")


def source_path(spec: str) -> str:
    """The file a spec reads (or the dataset spec itself)."""
    return str(SHIPPED_DIR / f"{spec}.jsonl") if (SHIPPED_DIR / f"{spec}.jsonl").is_file() else spec


def load_benchmark(spec: str, fields: Mapping[str, str], limit: int | None) -> tuple[list[ProblemRow], list[Reject]]:
    """The problems of one benchmark; a dataset's `test` split unless the spec names another."""
    path: str | Path = spec if is_dataset(spec) else Path(source_path(spec))
    return read_problems(path, fields, limit, key="evaluate.benchmarks", default_split="test")
