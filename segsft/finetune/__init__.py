"""Selective SFT (docs/method.md step 8): labels from the masks table, HF Trainer + DeepSpeed ZeRO.

`STAGE.check(settings)` lists every config problem; `STAGE.run(settings, rank, world)` runs the
stage (see stage.py for the files it writes). Heavy imports (transformers, deepspeed) happen
inside the run.
"""

from pathlib import Path
from typing import Any

from segsft.finetune.labels import IGNORE_INDEX, label_tokens
from segsft.config_schema import Settings
from segsft.finetune.settings import check_config
from segsft.store.layout import FinetuneLayout

__all__ = ["STAGE", "IGNORE_INDEX", "check_config", "label_tokens"]


class _FinetuneStage:
    """segsft.run.stage_api.Stage for docs/method.md step 8 (the same call on every rank under torchrun)."""

    name = "finetune"

    def check(self, s: Settings) -> list[str]:
        return check_config(s)

    def run(self, s: Settings, rank: int, world: int) -> Any:
        from segsft.finetune.stage import run as _run

        return _run(s, checked=True)

    def outputs(self, s: Settings) -> dict[str, Path]:
        lay = FinetuneLayout(Path(str(s.finetune_dir)))
        return {k: getattr(lay, k) for k in FinetuneLayout.OUTPUTS}


STAGE = _FinetuneStage()
