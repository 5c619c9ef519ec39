"""The sweep table of a `--multirun stage=select`: one row per job, from each job's summary.

A Hydra callback (configured in segsft/conf/select/grid/default.yaml): after each job it writes a
one-row `sweep_row.parquet` into the job's Hydra directory (`<sweep dir>/<job>/`), read from
the job's own `summary.json`; at the end it gathers the rows into `<sweep dir>/sweep.parquet`
and prints them. Per-job files keep this correct under launchers that run jobs in other
processes. Nothing is recomputed from the attribution tables.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import DictConfig

from segsft.store.io import write_parquet
from segsft.store.layout import SWEEP_FILE as TABLE_FILE
from segsft.store.layout import SWEEP_ROW_FILE as ROW_FILE
from segsft.store.layout import SelectionLayout
from segsft.schemas import SWEEP_SCHEMA

log = logging.getLogger(__name__)

SHOWN = ("job", "method", "score", "top_mass", "max_consistency", "min_consistency", "min_tokens",
         "share_segments_kept", "share_tokens_kept", "selection_dir")

try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover - hydra is a dependency; keep the module importable without it
    Callback = object  # type: ignore[misc,assignment]


def sweep_row(job: int, summary: dict) -> dict:
    s, o = summary["settings"], summary["overall"]
    return {
        "job": job, "method": s["method"], "top_mass": s["top_mass"], "max_consistency": s["max_consistency"],
        "min_consistency": s["min_consistency"], "always_keep": ",".join(str(i) for i in s["always_keep"]),
        "min_tokens": s["min_tokens"], "seed": s["seed"], "unconverged": s["unconverged"],
        "borderline": s.get("borderline", "rule"),
        "score": s.get("score"), "order": s.get("order", "high"), "samples": o["samples"], "segments": o["segments"],
        "segments_kept": o["segments_kept"], "share_segments_kept": o["share_segments_kept"],
        "tokens": o["tokens"], "tokens_kept": o["tokens_kept"], "share_tokens_kept": o["share_tokens_kept"],
        "selection_dir": summary["selection_dir"],
    }


def collect(sweep_dir: str | Path) -> pl.DataFrame:
    """Every job's row under `sweep_dir`, by job number, written to `sweep_dir/sweep.parquet`."""
    sweep_dir = Path(sweep_dir)
    rows = sorted(sweep_dir.glob(f"*/{ROW_FILE}"))
    table = (pl.concat([pl.read_parquet(p) for p in rows]) if rows
             else pl.from_arrow(SWEEP_SCHEMA.empty_table())).sort("job")
    write_parquet(sweep_dir / TABLE_FILE, table.to_arrow(), SWEEP_SCHEMA)
    return table


def show(table: pl.DataFrame) -> str:
    cols = [c for c in SHOWN if c in table.columns]
    with pl.Config(tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=200, tbl_width_chars=250, tbl_hide_dataframe_shape=True):
        return str(table.select(cols).with_columns(pl.col("share_segments_kept", "share_tokens_kept").round(4)))


class SweepTable(Callback):
    """Hydra callback: a one-row file per finished select job, the table at the end of the multirun."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # The sweep dir is reused by every sweep of a run_dir: drop rows of an earlier sweep.
        sweep_dir = Path(config.hydra.sweep.dir)
        for p in sweep_dir.glob(f"*/{ROW_FILE}"):
            p.unlink()

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if config.get("stage") != "select" or getattr(job_return.status, "name", "") != "COMPLETED":
            return
        summary_path = SelectionLayout(Path(str(config.selection_dir))).summary
        if not summary_path.is_file():
            log.warning("sweep: job %s left no %s; it is not in the sweep table", config.hydra.job.num, summary_path)
            return
        row = sweep_row(int(config.hydra.job.num), json.loads(summary_path.read_text()))
        write_parquet(Path(config.hydra.runtime.output_dir) / ROW_FILE, [row], SWEEP_SCHEMA)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        table = collect(sweep_dir)
        print(f"\nsweep: {table.height} job(s), table {sweep_dir / TABLE_FILE}\n{show(table)}", flush=True)
        log.info("sweep table with %d row(s): %s", table.height, sweep_dir / TABLE_FILE)
