"""Benchmark specs -> problems: a shipped name (segsft/data/benchmarks/<name>.jsonl), a JSONL/Parquet
path, or hub:<dataset id>[:<config>[:<split>]] loaded with `datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from segsft.store.corpus import CorpusError, ProblemRow, Reject, read_problems
from segsft.store.shipped import benchmarks_dir

#: The paper's sets, shipped with the package (see its README.md there for provenance).
SHIPPED_DIR = benchmarks_dir()


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.jsonl"))


def benchmark_name(spec: str) -> str:
    if spec.startswith("hub:"):
        return spec[4:].replace("/", "_").replace(":", "_")
    return Path(spec).stem if ("/" in spec or spec.endswith((".jsonl", ".parquet"))) else spec


def spec_problem(spec: str) -> str | None:
    """Why `spec` cannot be a benchmark, or None."""
    if spec.startswith("hub:"):
        import importlib.util

        return None if importlib.util.find_spec("datasets") else (
            f"evaluate.benchmarks: {spec} needs the `datasets` package (a default dependency): pip install datasets")
    if (SHIPPED_DIR / f"{spec}.jsonl").is_file() or Path(spec).is_file():
        return None
    return (f"evaluate.benchmarks: {spec!r} is neither a shipped benchmark ({', '.join(shipped())}) nor an existing "
            "JSONL/Parquet file nor hub:<dataset id>")


def source_path(spec: str) -> str:
    """The file a spec reads (or the hub spec itself)."""
    if spec.startswith("hub:"):
        return spec
    return str(SHIPPED_DIR / f"{spec}.jsonl") if (SHIPPED_DIR / f"{spec}.jsonl").is_file() else spec


def load_benchmark(spec: str, fields: Mapping[str, str], limit: int | None) -> tuple[list[ProblemRow], list[Reject]]:
    if spec.startswith("hub:"):
        return _from_hub(spec[4:], fields, limit)
    path = SHIPPED_DIR / f"{spec}.jsonl" if (SHIPPED_DIR / f"{spec}.jsonl").is_file() else Path(spec)
    return read_problems(path, fields, limit, key="evaluate.benchmarks")


def _from_hub(spec: str, fields: Mapping[str, str], limit: int | None) -> tuple[list[ProblemRow], list[Reject]]:
    import datasets

    parts = spec.split(":")
    name, config, split = parts[0], (parts[1] if len(parts) > 1 else None), (parts[2] if len(parts) > 2 else "test")
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline, gated or misspelled: the user's to fix
        raise CorpusError(f"evaluate.benchmarks: hub:{spec} could not be loaded ({str(e).splitlines()[0][:200]}): "
                          "check the id, your access (huggingface-cli login) and the network") from None
    rows: list[Any] = list(ds)[:limit] if limit is not None else list(ds)
    out, rejects = [], []
    q, a, i_ = fields.get("question", "question"), fields.get("answer", "answer"), fields.get("id")
    for i, r in enumerate(rows):
        if r.get(q) in (None, "") or r.get(a) in (None, ""):
            rejects.append(Reject(f"{name}-{i}", f"row {i}: missing field {q!r} or {a!r}", f"hub:{spec}", i))
            continue
        out.append(ProblemRow(str(r.get(i_) if i_ and r.get(i_) is not None else f"{name}-{i}"), str(r[q]), str(r[a]),
                              tuple(str(c) for c in r["choices"]) if r.get("choices") else None, i))
    return out, rejects
