"""Stage evaluate: accuracy and output length of models on the paper's benchmarks.

    python pipeline.py stage=evaluate run_dir=runs/x [evaluate.models=[a,b]] [evaluate.benchmarks=[aime24]]
"""

from __future__ import annotations

from pathlib import Path

from segsft.config_schema import Settings
from segsft.evaluate.stage import check_config, models_of
from segsft.evaluate.stage import run as _run
from segsft.store.layout import GenerationLayout

__all__ = ["STAGE", "check_config", "models_of"]


class _EvaluateStage:
    """segsft.run.stage_api.Stage: every rank generates its shard; the last to finish tabulates."""

    name = "evaluate"
    sharded = True

    def check(self, s: Settings) -> list[str]:
        return check_config(s)

    def run(self, s: Settings, rank: int, world: int) -> Path | None:
        return _run(s, rank, world)

    def outputs(self, s: Settings) -> dict[str, Path]:
        lay = GenerationLayout(Path(s.eval_dir))
        return {"generations": lay.pattern, "results": lay.results}


STAGE = _EvaluateStage()
