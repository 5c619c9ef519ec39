"""Hand-made attribution directories (tests, benchmarks): the real schemas, files and markers.

Nothing here runs a model. `write_attribution` lays tables out exactly as the attribution
stage does (`{segments,samples,rejects}-<part>.parquet` + `part-<part>.done`);
`random_tables` makes large synthetic tables with numpy, without per-row Python.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa

from segsft.store.layout import AttributionLayout, RunLayout, part_name
from segsft.store.io import write_json, write_parquet
from segsft.schemas import REJECTS_SCHEMA, SAMPLES_SCHEMA, SEGMENTS_SCHEMA

_SAMPLE_DEFAULTS = {"n_segments": 0, "answer_logprob": -1.0, "baseline_logprob": -5.0, "attr_total": 4.0,
                    "attr_norm": 1.0, "completeness_gap": 0.0, "rule": "gauss_legendre", "steps": 16,
                    "model": "synthetic", "seconds": 0.0, "steps_used": 16, "decision_stability": None,
                    "converged": None, "error_bound": None}


def segment_rows(sample_id: str, strengths: Iterable[float], consistencies: Iterable[float | None],
                 n_tokens: Iterable[int] | None = None, token_offset: int = 10) -> list[dict]:
    """Rows of the segments table for one sample; char spans of 10 characters per token."""
    rows, tok, char = [], token_offset, 0
    strengths, consistencies = list(strengths), list(consistencies)
    sizes = list(n_tokens) if n_tokens is not None else [3] * len(strengths)
    for k, (s, c, n) in enumerate(zip(strengths, consistencies, sizes)):
        rows.append({"sample_id": sample_id, "segment": k, "char_start": char, "char_end": char + 10 * n,
                     "token_start": tok, "token_end": tok + n, "n_tokens": n, "attr_sum": float(s),
                     "attr_abs_sum": float(s), "strength": s, "consistency": c, "token_attr": [0.0] * n})
        tok, char = tok + n, char + 10 * n
    return rows


def sample_rows(segments: list[dict], n_tokens: Mapping[str, int] | None = None) -> list[dict]:
    """One samples-table row per sample of `segments`; n_tokens defaults to its last token_end."""
    out: dict[str, dict] = {}
    for r in segments:
        row = out.setdefault(r["sample_id"], {"sample_id": r["sample_id"], **_SAMPLE_DEFAULTS})
        row["n_segments"] += 1
        row["n_tokens"] = max(row.get("n_tokens", 0), r["token_end"])
    for sid, n in (n_tokens or {}).items():
        out[sid]["n_tokens"] = n
    for row in out.values():
        row["train_tokens"] = row["n_tokens"]  # no answer suffix in these tables
    return list(out.values())


def write_part(adir: Path, segments: Any, samples: Any, rank: int = 0, world: int = 1, done: bool = True,
               rejects: Any = ()) -> str:
    """One part (rows or tables), with its completion marker unless done=False."""
    part, lay = part_name(rank, world), AttributionLayout(Path(adir))
    write_parquet(lay.table("segments", part), segments, SEGMENTS_SCHEMA)
    write_parquet(lay.table("samples", part), samples, SAMPLES_SCHEMA)
    write_parquet(lay.table("rejects", part), list(rejects), REJECTS_SCHEMA)
    if done:
        write_json(lay.marker(part), {"part": part, "synthetic": True})
    return part


def write_attribution(run_dir: str | Path, segments: list[dict], samples: list[dict] | None = None, world: int = 1,
                      rejects: list[dict] = ()) -> Path:
    """Split rows over `world` complete parts by sample (round robin), as ranks would; the
    rejects go to part 0."""
    adir = RunLayout(run_dir).attribution.dir
    samples = samples if samples is not None else sample_rows(segments)
    order = {r["sample_id"]: i for i, r in enumerate(samples)}
    for rank in range(world):
        write_part(adir, [r for r in segments if order[r["sample_id"]] % world == rank],
                   [r for r in samples if order[r["sample_id"]] % world == rank], rank, world,
                   rejects=rejects if rank == 0 else ())
    return adir


def random_tables(n_samples: int, n_segments: int, seed: int = 0, first: int = 0) -> tuple[pa.Table, pa.Table]:
    """(segments, samples) tables of n_samples x n_segments rows with random scores.

    `token_attr` is written empty: selection never reads it. Consistency is null where the
    segment has no attribution (about 1 in 50), as the attribution stage writes it.
    """
    rng = np.random.default_rng(seed + first)
    n = n_samples * n_segments
    ids = np.char.add("s", np.arange(first, first + n_samples).astype(str))
    sample_id = np.repeat(ids, n_segments)
    segment = np.tile(np.arange(n_segments, dtype=np.int32), n_samples)
    n_tok = rng.integers(1, 400, size=n, dtype=np.int32)
    ends = np.cumsum(n_tok.reshape(n_samples, n_segments), axis=1).ravel().astype(np.int32)
    starts = ends - n_tok
    strength = rng.gamma(1.0, 0.02, size=n)
    consistency = rng.uniform(0, 1, size=n)
    null = rng.uniform(size=n) < 0.02
    strength[null] = 0.0
    attr_abs = strength * np.sqrt(n_tok)
    offsets = pa.array(np.zeros(n + 1, dtype=np.int32))
    segments = pa.table({
        "sample_id": pa.array(sample_id, pa.string()),
        "segment": segment, "char_start": starts * 4, "char_end": ends * 4,
        "token_start": starts + 100, "token_end": ends + 100, "n_tokens": n_tok,
        "attr_sum": attr_abs * consistency, "attr_abs_sum": attr_abs, "strength": strength,
        "consistency": pa.array(consistency, pa.float64(), mask=null),
        "token_attr": pa.ListArray.from_arrays(offsets, pa.array([], pa.float32())),
        # The cheap signals, loosely tied to the attribution as on real traces.
        "nll_mean": rng.gamma(2.0, 0.5, size=n) + 0.5 * strength, "entropy_mean": rng.gamma(2.0, 0.6, size=n),
        "gxi_sum": attr_abs * consistency * rng.uniform(0.5, 1.5, size=n),
        "gxi_abs_sum": attr_abs * rng.uniform(0.5, 1.5, size=n),
        "strength_err": pa.nulls(n, pa.float64()), "borderline": pa.nulls(n, pa.bool_()),
    }, schema=SEGMENTS_SCHEMA)
    total = ends.reshape(n_samples, n_segments)[:, -1] + 120
    samples = pa.table({
        "sample_id": pa.array(ids, pa.string()), "n_tokens": total.astype(np.int32),
        "train_tokens": (total - 20).astype(np.int32),  # without the ~20-token answer suffix
        "n_segments": np.full(n_samples, n_segments, np.int32),
        **{k: pa.array([v] * n_samples) for k, v in _SAMPLE_DEFAULTS.items() if k != "n_segments"},
        "row": pa.array(np.arange(first, first + n_samples), pa.int64()),
    })
    return segments, samples.select(SAMPLES_SCHEMA.names).cast(SAMPLES_SCHEMA)
