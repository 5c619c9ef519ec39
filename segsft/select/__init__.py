"""Stage 2: DESIGN step 7's threshold rule (and the full / random baselines) -> masks.

`run(cfg)` reads `run_dir/attribution/` and writes `selection_dir/`; `check_config(cfg)`
lists every problem of `select.*`. The rule itself is `rule.attribution_rule`.
"""

from segsft.selection_config import METHODS, SelectConfig, check_config
from segsft.attribution_tables import AttributionNotReady, open_attribution
from segsft.rule import attribution_rule
from segsft.schemas import MASKS_SCHEMA, PER_SAMPLE_SCHEMA, SWEEP_SCHEMA
from segsft.select.stage import SelectionDirTaken, run, select_masks

__all__ = [
    "AttributionNotReady", "MASKS_SCHEMA", "METHODS", "PER_SAMPLE_SCHEMA", "SWEEP_SCHEMA", "SelectConfig",
    "SelectionDirTaken", "attribution_rule", "check_config", "open_attribution", "run", "select_masks",
]
