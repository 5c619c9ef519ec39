"""The compare stage's work (its STAGE is in segsft/compare/__init__.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segsft.config_schema import Settings
from segsft.errors import PipelineError
from segsft.store.layout import RunLayout

log = logging.getLogger(__name__)


def run(cfg: Settings | Any) -> Path:
    import polars as pl

    from segsft.store.attribution_tables import open_attribution
    from segsft.compare.agreement import agreement, describe, show
    from segsft.store.io import write_parquet
    from segsft.schemas import AGREEMENT_SCHEMA

    cfg = Settings.of(cfg)
    run = RunLayout(cfg.run_dir)
    done = [s for s in run.selections() if s.finished()]
    for s in run.selections():
        if not s.finished():  # a select killed or still running: its masks may be partial
            log.warning("compare: %s is left out: it has no completion marker (its select was stopped or is running)",
                        s.dir)
    if len(done) < 2:
        raise PipelineError(f"{run.selection_root} holds {len(done)} finished selection(s); compare needs two or more: "
                            f"run `python pipeline.py --multirun stage=select run_dir={cfg.run_dir} +select/grid=default "
                            "select.method=attribution,random,score select.score=nll_mean` (or stage=select with other "
                            "settings) first")
    table = agreement([describe(s) for s in done], open_attribution(cfg.run_dir))
    write_parquet(run.agreement, table.to_arrow(), AGREEMENT_SCHEMA)
    with pl.Config(tbl_rows=-1):
        print(show(table), flush=True)
    log.info("compare: %d selections, %d pairs -> %s", len(done), table.height, run.agreement)
    return run.agreement
