"""Stage 1: integrated-gradients attribution of every trace's tokens to its answer."""

import logging
from pathlib import Path
from typing import Any

from segsft.method.ig import IGResult, integrated_gradients
from segsft.method.metrics import segment_metrics
from segsft.method.quadrature import RULES, quadrature
from segsft.attribute.runner import AttributeStage, attribution_dir
from segsft.config_schema import Settings
from segsft.errors import PipelineError
from segsft.store.layout import RunLayout

log = logging.getLogger(__name__)

__all__ = ["STAGE", "AttributeStage", "IGResult", "RULES", "attribution_dir", "integrated_gradients", "quadrature", "segment_metrics"]


class _AttributeStage:
    """segsft.run.stage_api.Stage for docs/method.md steps 1-6 (this rank's shard)."""

    name = "attribute"
    sharded = True

    def check(self, s: Settings) -> list[str]:
        from segsft.attribute.config import check_attribute

        return check_attribute(s)

    def run(self, s: Settings, rank: int, world: int) -> dict:
        result = AttributeStage(s).run(rank, world)
        from segsft.store.consolidate import consolidate, mixed_world_sizes

        if s.attribute.consolidate:
            consolidate(s.run_dir)
        elif mixed_world_sizes(s.run_dir):
            # Once the run is complete its parts become one (the last rank to finish does it).
            try:
                consolidate(s.run_dir)
            except PipelineError as e:  # another writer is still at work: the stages read each sample once anyway
                log.warning("%s", e)
        return result

    def outputs(self, s: Settings) -> dict[str, Path]:
        return {"attribution": RunLayout(s.run_dir).attribution.dir}


STAGE = _AttributeStage()
