"""Stage 2: docs/method.md step 7's threshold rule (and the full / random baselines) -> masks.

`run(cfg)` reads `run_dir/attribution/` and writes `selection_dir/`; `check_config(cfg)`
lists every problem of `select.*`. The rule itself is `rule.attribution_rule`.
"""

from pathlib import Path
from typing import Any

from segsft.store.layout import SelectionLayout
from segsft.method.selection_config import METHODS, SelectConfig, check_config
from segsft.store.attribution_tables import AttributionNotReady, open_attribution
from segsft.method.rule import attribution_rule
from segsft.schemas import MASKS_SCHEMA, PER_SAMPLE_SCHEMA, SWEEP_SCHEMA
from segsft.select.stage import SelectionDirTaken, run, select_masks

__all__ = [
    "STAGE", "AttributionNotReady", "MASKS_SCHEMA", "METHODS", "PER_SAMPLE_SCHEMA", "SWEEP_SCHEMA", "SelectConfig",
    "SelectionDirTaken", "attribution_rule", "check_config", "open_attribution", "run", "select_masks",
]


class _SelectStage:
    """segsft.run.stage_api.Stage for docs/method.md step 7 (one process: rank 0)."""

    name = "select"
    rank0_only = True

    def check(self, cfg: Any) -> list[str]:
        return check_config(cfg)

    def run(self, cfg: Any, rank: int, world: int) -> dict | None:
        return run(cfg)

    def outputs(self, cfg: Any) -> dict[str, Path]:
        return SelectionLayout(Path(str(cfg.selection_dir))).outputs()


STAGE = _SelectStage()
