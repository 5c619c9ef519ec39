"""Selective SFT (DESIGN step 8): labels from the masks table, HF Trainer + DeepSpeed ZeRO.

`check_config(cfg)` lists every config problem; `run(cfg)` runs the stage (see stage.py
for the files it writes). Heavy imports (transformers, deepspeed) happen inside `run`.
"""

from typing import Any, Sequence

from segsft.finetune.labels import IGNORE_INDEX, label_tokens
from segsft.finetune.settings import FinetuneSettings, check_config


def run(cfg: Any, callbacks: Sequence[Any] = ()) -> Any:
    """Run the finetune stage for a composed config; returns a FinetuneResult."""
    from segsft.finetune.stage import run as _run

    return _run(cfg, callbacks)


__all__ = ["IGNORE_INDEX", "FinetuneSettings", "check_config", "label_tokens", "run"]
