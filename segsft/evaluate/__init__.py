"""Stage evaluate: accuracy and output length of models on the paper's benchmarks.

    python pipeline.py stage=evaluate run_dir=runs/x [evaluate.models=[a,b]] [evaluate.benchmarks=[aime24]]
"""

from __future__ import annotations

from pathlib import Path

from segsft.config_schema import Settings
from segsft.evaluate.stage import check_config, models_of
from segsft.evaluate.stage import run as _run
from segsft.run.stage_api import FunctionStage
from segsft.store.layout import GenerationLayout

__all__ = ["STAGE", "check_config", "models_of"]


def _outputs(s: Settings) -> dict[str, Path]:
    lay = GenerationLayout(Path(s.eval_dir))
    return {"generations": lay.pattern, "results": lay.results}


#: Every rank (or shard) generates its share; the last to finish tabulates.
STAGE = FunctionStage("evaluate", check_config, _run, _outputs, sharded=True)
