"""stage=export: a fine-tuning run's training tokens as datasets TRL and axolotl read.

    python pipeline.py stage=export run_dir=runs/x [finetune_dir=...] [export.dir=...]

Reads `<finetune_dir>/train_tokens.parquet` (exactly the ids and labels our trainer saw) and
writes `<export.dir>/trl/train.parquet` (sample_id, input_ids, labels, completion_mask) and
`<export.dir>/axolotl/train.parquet` (input_ids, attention_mask, labels), plus a card saying
how to train on them. One process (rank 0).
"""

from __future__ import annotations

from pathlib import Path
from segsft.config_schema import Settings
from segsft.export.stage import export_dir
from segsft.export.stage import run as _run
from segsft.config_schema import empty_dir_problem

__all__ = ["STAGE", "export_dir"]


class _ExportStage:
    """segsft.run.stage_api.Stage: one process: rank 0."""

    name = "export"
    rank0_only = True

    def check(self, s: Settings) -> list[str]:
        return [p for p in (empty_dir_problem("finetune_dir", s.finetune_dir),) if p]

    def run(self, s: Settings, rank: int, world: int) -> dict[str, Path]:
        return _run(s)

    def outputs(self, s: Settings) -> dict[str, Path]:
        return export_dir(s).outputs()


STAGE = _ExportStage()
