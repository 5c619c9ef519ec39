"""Stage 2: docs/method.md step 7's threshold rule (and the full / random baselines) -> masks.

`STAGE.run(settings, rank, world)` reads `run_dir/attribution/` and writes `selection_dir/`;
`STAGE.check(settings)` lists every problem of `select.*`. The rule itself is `rule.attribution_rule`.
"""

from pathlib import Path

from segsft.config_schema import Settings

from segsft.store.layout import SelectionLayout
from segsft.method.selection_config import METHODS, SelectConfig, check_config
from segsft.store.attribution_tables import AttributionNotReady, open_attribution
from segsft.method.rule import attribution_rule
from segsft.schemas import MASKS_SCHEMA, PER_SAMPLE_SCHEMA, SWEEP_SCHEMA
from segsft.select.stage import SelectionDirTaken, select_masks
from segsft.select.stage import run as _run

__all__ = [
    "STAGE", "AttributionNotReady", "MASKS_SCHEMA", "METHODS", "PER_SAMPLE_SCHEMA", "SWEEP_SCHEMA", "SelectConfig",
    "SelectionDirTaken", "attribution_rule", "check_config", "open_attribution", "select_masks",
]


class _SelectStage:
    """segsft.run.stage_api.Stage for docs/method.md step 7 (one process: rank 0)."""

    name = "select"
    rank0_only = True

    def check(self, s: Settings) -> list[str]:
        return check_config(s)

    def run(self, s: Settings, rank: int, world: int) -> dict | None:
        return _run(s)

    def outputs(self, s: Settings) -> dict[str, Path]:
        return SelectionLayout(Path(str(s.selection_dir))).outputs()


STAGE = _SelectStage()
