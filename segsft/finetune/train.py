"""HF Trainer (+ DeepSpeed ZeRO) around the examples: arguments, model, resume, save."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Sequence

import torch

from segsft.config_schema import FinetuneConf, ModelConf
from segsft.run.dist import barrier, is_main, local_rank, rank_and_world
from segsft.run.launch import single_process_env, start_cpu_deepspeed_group
from segsft.finetune.checkpoints import CompleteMarker, StepCounter, latest_complete, remove_incomplete
from segsft.finetune.collate import ExampleDataset, PaddingCollator, packing_collator
from segsft.finetune.examples import Example
from segsft.finetune.progress import TokenProgress
from segsft.store.layout import FinetuneLayout
from segsft.finetune.settings import deepspeed_config_path
from segsft.run.models import model_path, pad_token_id, pick_attn_implementation, pick_device

log = logging.getLogger(__name__)


def _auto(value: Any, on_cuda: bool) -> bool:
    return on_cuda if value == "auto" else bool(value)


def training_arguments(s: FinetuneConf, output_dir: str | Path, on_cuda: bool) -> Any:
    """TrainingArguments for `s`. Build it BEFORE loading the model: under ZeRO-3 its
    DeepSpeed config must be alive so `from_pretrained` partitions weights as it loads."""
    from transformers import TrainingArguments

    names = {f.name for f in dataclasses.fields(TrainingArguments)}
    ds = deepspeed_config_path(s.deepspeed)
    kw: dict[str, Any] = dict(
        output_dir=str(output_dir),
        per_device_train_batch_size=s.per_device_train_batch_size,
        gradient_accumulation_steps=s.gradient_accumulation_steps,
        num_train_epochs=float(s.num_train_epochs),
        max_steps=int(s.max_steps),
        learning_rate=float(s.learning_rate),
        lr_scheduler_type=s.lr_scheduler_type,
        weight_decay=float(s.weight_decay),
        max_grad_norm=float(s.max_grad_norm),
        bf16=_auto(s.bf16, on_cuda),
        seed=int(s.seed),
        logging_steps=int(s.logging_steps),
        logging_first_step=True,
        save_strategy="steps",
        save_steps=int(s.save_steps),
        save_total_limit=s.save_total_limit,
        dataloader_num_workers=int(s.dataloader_num_workers),
        # tensorboard: our own writer into finetune_dir/tensorboard (reporters(), any transformers version).
        report_to=[] if s.report_to in (None, "none", "tensorboard") else [s.report_to],
        deepspeed=str(ds) if ds else None,
        # The examples are plain dicts of ids and labels; nothing to drop.
        remove_unused_columns=False,
        use_liger_kernel=bool(s.liger),
        # segsft.finetune.progress shows tokens per second instead of the Trainer's steps per second.
        disable_tqdm=True,
        dataloader_pin_memory=on_cuda,
    )
    # transformers 5 folds warmup_ratio into a fractional warmup_steps and renames
    # gradient_checkpointing to activation_checkpointing; 4.x has the old names.
    if "warmup_ratio" in names:
        kw["warmup_ratio"] = float(s.warmup_ratio)
    else:
        kw["warmup_steps"] = float(s.warmup_ratio)
    # The progress bar's tokens: real tokens of every rank (older transformers: a boolean, all tokens).
    tokens_field = next(f for f in dataclasses.fields(TrainingArguments) if f.name == "include_num_input_tokens_seen")
    kw["include_num_input_tokens_seen"] = "non_padding" if "str" in str(tokens_field.type) else True
    ckpt_key = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    kw[ckpt_key] = _auto(s.gradient_checkpointing, on_cuda)
    if not on_cuda and ds is None:
        kw["use_cpu"] = True
        if rank_and_world()[1] > 1:
            kw["ddp_backend"] = "gloo"
    if ds is not None:
        single_process_env()
        if not on_cuda:
            kw["accelerator_config"] = {"use_configured_state": True}
            start_cpu_deepspeed_group()
    return TrainingArguments(**kw)


def reporters(s: FinetuneConf, output_dir: Path) -> list[Any]:
    """finetune.report_to=tensorboard: the Trainer's TensorBoard callback, writing into
    FinetuneLayout.tensorboard on the main process (the others write nothing)."""
    if s.report_to != "tensorboard":
        return []
    from torch.utils.tensorboard import SummaryWriter
    from transformers.integrations import TensorBoardCallback

    writer = SummaryWriter(log_dir=str(FinetuneLayout(output_dir).tensorboard)) if is_main() else None
    return [TensorBoardCallback(tb_writer=writer)]


def load_for_training(m: ModelConf, packing: bool, half_precision: bool) -> Any:
    """The model in fp32 (master weights; bf16 is the Trainer's or DeepSpeed's mixed precision)."""
    from transformers import AutoModelForCausalLM

    kw: dict[str, Any] = dict(revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=torch.float32,
                              use_safetensors=True)
    attn = m.attn_implementation
    if packing:
        # Packed rows are separated by position ids only; flash-attention's varlen path
        # is what keeps samples from attending to one another.
        attn = "flash_attention_2"
    elif attn == "auto":
        # flash-attention runs in bf16/fp16 only: with fp32 training keep sdpa.
        device = pick_device("auto", local_rank())
        attn = pick_attn_implementation("auto", device) if half_precision else "sdpa"
    kw["attn_implementation"] = attn
    return AutoModelForCausalLM.from_pretrained(model_path(m), **kw)



def resume_point(output_dir: Path, args: Any, enabled: bool) -> Path | None:
    """The newest complete checkpoint (None for a fresh start); incomplete ones are removed."""
    ckpt = latest_complete(output_dir) if enabled else None
    barrier()  # every rank has picked before the main process deletes anything
    if is_main():
        remove_incomplete(output_dir)
    barrier()
    return ckpt


@dataclasses.dataclass
class TrainOutcome:
    trainer: Any
    resumed_from: Path | None
    steps_run: int
    first_step: int | None
    progress: TokenProgress


def train(
    s: FinetuneConf,
    model_cfg: ModelConf,
    tokenizer: Any,
    examples: Sequence[Example],
    output_dir: Path,
    callbacks: Sequence[Any] = (),
) -> TrainOutcome:
    """Train on `examples`, resuming from the newest complete checkpoint in `output_dir`."""
    from transformers import Trainer

    on_cuda = torch.cuda.is_available()
    args = training_arguments(s, output_dir, on_cuda)
    checkpointing = bool(getattr(args, "activation_checkpointing", getattr(args, "gradient_checkpointing", False)))
    log.info(
        "training on %s x %d process(es): bf16=%s gradient_checkpointing=%s deepspeed=%s, global batch %d "
        "(%d per device x %d accumulation), %s",
        args.device, args.world_size, args.bf16, checkpointing, args.deepspeed,
        args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size,
        args.per_device_train_batch_size, args.gradient_accumulation_steps,
        f"max_steps={args.max_steps}" if args.max_steps > 0 else f"{args.num_train_epochs:g} epochs",
    )
    model = load_for_training(model_cfg, s.packing, half_precision=bool(args.bf16 or args.fp16))
    if checkpointing:
        model.config.use_cache = False  # the cache is useless in training and clashes with checkpointing
    collator = packing_collator() if s.packing else PaddingCollator(pad_token_id(tokenizer, required=True))
    counter = StepCounter()
    progress = TokenProgress()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ExampleDataset(examples),
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=[CompleteMarker(), counter, progress, *reporters(s, output_dir), *callbacks],
    )
    ckpt = resume_point(output_dir, args, s.resume)
    if ckpt is not None:
        log.info("resuming from %s (the newest checkpoint marked complete)", ckpt)
    try:
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    except BaseException:
        progress.close()  # Ctrl-C or an error: its one line must come after the bar, not before
        raise
    return TrainOutcome(trainer, ckpt, counter.steps, counter.first_step, progress)
