"""stage=compare: pairwise agreement between every selection under run_dir/selection/.

    python pipeline.py stage=compare run_dir=runs/x   ->  runs/x/compare/agreement.parquet

Per pair: the Jaccard overlap of the kept segments per sample and the Spearman correlation of
the scores the two rank by (attribution: strength; select.method=score: its column), as mean
and median over the samples. The report shows the table.
"""

from __future__ import annotations

from pathlib import Path

from segsft.config_schema import Settings
from segsft.compare.stage import run as _run
from segsft.store.layout import RunLayout
from segsft.config_schema import empty_dir_problem

__all__ = ["STAGE"]


class _CompareStage:
    """segsft.run.stage_api.Stage: one process: rank 0."""

    name = "compare"
    rank0_only = True

    def check(self, s: Settings) -> list[str]:
        return [p for p in (empty_dir_problem("run_dir", s.run_dir),) if p]

    def run(self, s: Settings, rank: int, world: int) -> Path | None:
        return _run(s)

    def outputs(self, s: Settings) -> dict[str, Path]:
        return {"agreement": RunLayout(s.run_dir).agreement}


STAGE = _CompareStage()
