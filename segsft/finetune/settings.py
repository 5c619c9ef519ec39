"""The `finetune` config group as typed settings, and its checks (all problems at once)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from segsft.config_schema import Settings
from segsft.errors import PipelineError
from segsft.finetune.modes import MODES
from segsft.store.layout import SelectionLayout
from segsft.store.shipped import deepspeed_dir
from segsft.config_schema import empty_dir_problem

#: The shipped presets: `finetune.deepspeed=zero2` -> segsft/conf/deepspeed/zero2.json
DEEPSPEED_DIR = deepspeed_dir()
DEEPSPEED_NAMES = ("zero2", "zero3", "none")
AUTO_BOOL = ("auto", True, False)
#: Which samples finetune.mode=full trains: the selection's (a fair ablation) or the whole corpus.
FULL_SCOPES = ("selection", "corpus")


class FinetuneError(PipelineError):
    """A finetune configuration or input the user must change (the message says how)."""


def deepspeed_config_path(name: str) -> Path | None:
    """None for `none`; segsft/conf/deepspeed/<name>.json for a preset; else `name` as a JSON path."""
    if name in (None, "none"):
        return None
    if name in DEEPSPEED_NAMES:
        return DEEPSPEED_DIR / f"{name}.json"
    return Path(name)


def has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def _int_at_least(errs: list[str], key: str, v: Any, lo: int, hint: str = "") -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        errs.append(f"finetune.{key}={v!r}: use an integer >= {lo}{hint}")


def check_config(cfg: Settings) -> list[str]:
    """Every problem of the finetune settings, each saying what to change."""
    from segsft.run.models import check_model_config

    from segsft.store.corpus import limit_problem

    errs: list[str] = check_model_config(cfg.model)
    if limit_problem("data.limit", cfg.data.limit):
        errs.append(limit_problem("data.limit", cfg.data.limit))
    s = cfg.finetune
    if s.mode not in MODES:
        errs.append(f"finetune.mode={s.mode!r}: use one of {list(MODES)}")
    if s.full_scope not in FULL_SCOPES:
        errs.append(f"finetune.full_scope={s.full_scope!r}: use selection (mode=full trains the samples the selection "
                    "covers, the same set as mode=selected) or corpus (every sample of data.path)")
    if s.mode == "selected" or s.full_scope == "selection":
        # Full mode trains the samples the selection covers (a fair ablation) unless told otherwise.
        other = ("or use finetune.mode=full finetune.full_scope=corpus" if s.mode == "selected"
                 else "or set finetune.full_scope=corpus to train every corpus sample")
        if not cfg.selection_dir:
            errs.append(f"selection_dir is empty: point it to the select stage's output directory, {other}")
        elif cfg.stage == "finetune" and not SelectionLayout(Path(cfg.selection_dir)).masks.is_file():
            masks = SelectionLayout(Path(cfg.selection_dir)).masks
            errs.append(f"{masks} does not exist: run stage=select first, set selection_dir "
                        f"to a directory holding {masks.name}, {other}")
        elif cfg.stage == "finetune" and (why := SelectionLayout(Path(cfg.selection_dir)).unfinished_problem()):
            errs.append(why)
    ds = deepspeed_config_path(s.deepspeed)
    if ds is not None and not ds.is_file():
        errs.append(f"finetune.deepspeed={s.deepspeed!r}: use one of {list(DEEPSPEED_NAMES)} or a path to a DeepSpeed JSON file")
    if ds is not None and not has_module("deepspeed"):
        errs.append("finetune.deepspeed is set but deepspeed is not installed: pip install deepspeed, or set finetune.deepspeed=none")
    if isinstance(s.max_steps, bool) or not isinstance(s.max_steps, int) or (s.max_steps < 1 and s.max_steps != -1):
        errs.append(f"finetune.max_steps={s.max_steps!r}: use -1 (train num_train_epochs) or an integer >= 1")
    if s.max_steps == -1 and not (isinstance(s.num_train_epochs, (int, float)) and s.num_train_epochs > 0):
        errs.append(f"finetune.num_train_epochs={s.num_train_epochs!r}: use a number > 0 (or set finetune.max_steps)")
    if not isinstance(s.learning_rate, (int, float)) or s.learning_rate <= 0:
        errs.append(f"finetune.learning_rate={s.learning_rate!r}: use a number > 0")
    if not isinstance(s.warmup_ratio, (int, float)) or not 0 <= s.warmup_ratio < 1:
        errs.append(f"finetune.warmup_ratio={s.warmup_ratio!r}: use a fraction in [0, 1)")
    if not isinstance(s.weight_decay, (int, float)) or not 0 <= s.weight_decay < 1:
        errs.append(f"finetune.weight_decay={s.weight_decay!r}: use a number in [0, 1)")
    if not isinstance(s.seed, int) or not 0 <= s.seed < 2**32:
        errs.append(f"finetune.seed={s.seed!r}: use an integer in [0, 2**32)")
    if not isinstance(s.max_grad_norm, (int, float)) or s.max_grad_norm < 0:
        errs.append(f"finetune.max_grad_norm={s.max_grad_norm!r}: use a number >= 0 (0 disables clipping)")
    _int_at_least(errs, "per_device_train_batch_size", s.per_device_train_batch_size, 1)
    _int_at_least(errs, "gradient_accumulation_steps", s.gradient_accumulation_steps, 1)
    _int_at_least(errs, "max_length", s.max_length, 0, " (0 = no truncation)")
    _int_at_least(errs, "logging_steps", s.logging_steps, 1)
    _int_at_least(errs, "save_steps", s.save_steps, 1)
    _int_at_least(errs, "dataloader_num_workers", s.dataloader_num_workers, 0)
    if s.save_total_limit is not None:
        # The newest checkpoint may be incomplete when a run is killed; keeping two
        # guarantees the previous, complete one survives rotation.
        _int_at_least(errs, "save_total_limit", s.save_total_limit, 2, " or null (keep all)")
    for key in ("bf16", "gradient_checkpointing"):
        if getattr(s, key) not in AUTO_BOOL:
            errs.append(f"finetune.{key}={getattr(s, key)!r}: use auto (on with CUDA, off on CPU), true or false")
    for key in ("resume", "packing", "liger"):
        if not isinstance(getattr(s, key), bool):
            errs.append(f"finetune.{key}={getattr(s, key)!r}: use true or false")
    if s.packing is True and not has_module("flash_attn"):
        errs.append("finetune.packing=true needs flash-attention (pip install flash-attn, on CUDA): "
                    "install it or set finetune.packing=false")
    needs = {"tensorboard": "tensorboard", "wandb": "wandb"}.get(s.report_to)
    if needs and not has_module(needs):
        errs.append(f"finetune.report_to={s.report_to} needs the {needs} package: pip install {needs}, "
                    "or set finetune.report_to=none")
    if s.liger is True and not has_module("liger_kernel"):
        errs.append("finetune.liger=true needs Liger kernels (pip install liger-kernel): install them or set finetune.liger=false")
    errs += [p for p in (empty_dir_problem("finetune_dir", cfg.finetune_dir),) if p]
    if not cfg.data.path:
        errs.append("data.path is empty: point it to the JSONL or Parquet corpus the masks were made from")
    elif cfg.stage == "finetune":  # under stage=all the attribute stage's check says it once
        from segsft.store.corpus import corpus_path_problem
        from segsft.store.hub import adapter_problem

        errs += [p for p in [corpus_path_problem(cfg.data.path), adapter_problem(cfg.data.adapter)] if p]
    if not cfg.model.name_or_path:
        errs.append("model.name_or_path is empty: give a hub id or a local model directory to fine-tune")
    return errs
