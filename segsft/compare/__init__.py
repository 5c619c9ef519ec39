"""stage=compare: pairwise agreement between every selection under run_dir/selection/.

    python pipeline.py stage=compare run_dir=runs/x   ->  runs/x/compare/agreement.parquet

Per pair: the Jaccard overlap of the kept segments per sample and the Spearman correlation of
the scores the two rank by (attribution: strength; select.method=score: its column), as mean
and median over the samples. The report shows the table.
"""

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


class _CompareStage:
    """segsft.run.stage_api.Stage: one process: rank 0."""

    name = "compare"
    rank0_only = True

    def check(self, s: Settings) -> list[str]:
        return [] if s.run_dir else ["run_dir is empty: set run_dir=<the run whose selections to compare>"]

    def run(self, s: Settings, rank: int, world: int) -> Path | None:
        return run(s)

    def outputs(self, s: Settings) -> dict[str, Path]:
        return {"agreement": RunLayout(s.run_dir).agreement}


STAGE = _CompareStage()
