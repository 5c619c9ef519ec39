"""The finetune stage: corpus + masks -> examples -> Trainer -> model, with its records.

Files under `finetune_dir` (every rank writes into this one directory; the files below
are written by the main process only):
- `train_tokens.parquet`: sample_id, input_ids, labels (IGNORE_INDEX = no loss)
- `data_report.json`: where every corpus row went, tokens and the share carrying loss
- `run_config.json`: the resolved settings of the run
- `fingerprint.json`: what the checkpoints depend on; a resumed run must match it
- `checkpoint-N/`: Trainer/DeepSpeed checkpoints; `COMPLETE` marks the whole ones
- `model/`: final weights (safetensors) + tokenizer
- `loss_history.json`: the logged loss per step, first and last
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from segsft.config_schema import DataConf, FinetuneConf, Settings
from segsft.store.corpus import corpus_identity, read_corpus
from segsft.finetune.checkpoints import checkpoints, latest_complete
from segsft.finetune.examples import build_examples, log_report, write_train_tokens
from segsft.finetune.masks import read_masks
from segsft.finetune.settings import FinetuneError, check_config, deepspeed_config_path
from segsft.run.dist import is_main as _is_main
from segsft.run.dist import leave_process_group, rank_and_world
from segsft.store.fingerprint import SettingsChanged, check_or_store
from segsft.store.io import file_sha256, write_json
from segsft.store.layout import FinetuneLayout, SelectionLayout

log = logging.getLogger(__name__)


@dataclass
class FinetuneResult:
    finetune_dir: Path
    model_dir: Path
    train_tokens: Path
    loss_history: Path
    resumed_from: Path | None
    steps_run: int
    trainer: Any


def uses_masks(s: FinetuneConf) -> bool:
    """Selected mode trains the masks; full mode trains the samples they cover unless full_scope=corpus."""
    return s.mode == "selected" or s.full_scope == "selection"


def _fingerprint(cfg: Settings, s: FinetuneConf) -> dict[str, Any]:
    masks = SelectionLayout(Path(cfg.selection_dir)).masks if uses_masks(s) else None
    return {
        "mode": s.mode,
        "full_scope": s.full_scope if s.mode == "full" else None,
        "selection_dir": str(cfg.selection_dir) if masks else None,
        "masks_sha256": file_sha256(masks) if masks else None,
        "data_path": str(cfg.data.path),
        "data_sha256": corpus_identity(cfg.data.path),
        "data_fields": {k: cfg.data.fields[k] for k in sorted(cfg.data.fields)},
        "data_limit": cfg.data.limit,
        "model": str(cfg.model.name_or_path),
        "max_length": s.max_length,
        "deepspeed": s.deepspeed,
        "per_device_train_batch_size": s.per_device_train_batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        # DeepSpeed's ZeRO checkpoints are partitioned per rank: same world size to resume.
        "world_size": rank_and_world()[1] if s.deepspeed != "none" else None,
    }


def _check_resumable(out: Path, fp: dict[str, Any], s: FinetuneConf) -> None:
    """Refuse to continue another run's checkpoints (the store's one fingerprint check, bound
    once a complete checkpoint exists); clear them when resume is off."""
    if checkpoints(out) and not s.resume:
        if _is_main():
            log.warning("finetune.resume=false: removing the checkpoints of an earlier run in %s", out)
            for _, p, _ in checkpoints(out):
                shutil.rmtree(p, ignore_errors=True)
    try:
        check_or_store(FinetuneLayout(out).fingerprint, fp, "checkpoints",
                       "use a new finetune_dir, restore those settings, or set finetune.resume=false to start over",
                       bound=lambda: s.resume and latest_complete(out) is not None)
    except SettingsChanged as e:
        raise FinetuneError(str(e)) from None


def _read_corpus(data: DataConf) -> tuple[list, list]:
    """The corpus rows the earlier stages saw: `data.limit` (when set) cuts it as there."""
    return read_corpus(data.path, data.fields, data.limit, data.adapter)


def _loss_history(trainer: Any) -> dict[str, Any]:
    steps = [
        {k: e[k] for k in ("step", "epoch", "loss", "learning_rate", "grad_norm") if k in e}
        for e in trainer.state.log_history
        if "loss" in e
    ]
    return {
        "steps": steps,
        "first_loss": steps[0]["loss"] if steps else None,
        "last_loss": steps[-1]["loss"] if steps else None,
        "global_step": trainer.state.global_step,
    }


def run(cfg: Settings | Any, callbacks: Sequence[Any] = (), checked: bool = False) -> FinetuneResult:
    """Run the finetune stage for the composed config (`finetune.*`, `model.*`, `data.*`,
    `selection_dir`, `finetune_dir`). Same command on every rank under torchrun.
    `callbacks`: extra TrainerCallbacks (logging, tests), run after the stage's own.
    `checked`: the pipeline has checked the config already (it checks every stage once)."""
    import torch

    from segsft.finetune.train import train
    from segsft.run.models import load_tokenizer

    cfg = Settings.of(cfg)
    errors = [] if checked else check_config(cfg)
    if errors:
        raise FinetuneError("invalid finetune configuration:\n  - " + "\n  - ".join(errors))
    s = cfg.finetune
    out = Path(cfg.finetune_dir)
    out.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(cfg, s)
    if uses_masks(s):
        from segsft.finetune.provenance import check_corpus_matches

        check_corpus_matches(cfg.selection_dir, cfg.run_dir, str(cfg.data.path), fp["data_sha256"],
                             bool(s.allow_corpus_change))
    _check_resumable(out, fp, s)

    tokenizer = load_tokenizer(cfg.model)
    samples, rejects = _read_corpus(cfg.data)
    masks = read_masks(cfg.selection_dir) if uses_masks(s) else None
    examples, report = build_examples(tokenizer, samples, rejects, s.mode, masks, s.max_length)
    log_report(report)
    if not examples:
        raise FinetuneError(
            f"no training example left of {report.corpus_rows} corpus rows ({report.counts()}): check that "
            "data.path is the corpus the masks were made from, raise finetune.max_length, or use finetune.mode=full"
        )
    lay = FinetuneLayout(out)
    if _is_main():
        write_train_tokens(lay.train_tokens, examples)
        write_json(lay.data_report, {**report.summary(), "dropped_samples": report.dropped})
        write_json(lay.run_config, {"config": cfg.as_dict()})
    log.info(
        "finetune: mode=%s deepspeed=%s (%s) cuda=%s bf16=%s gradient_checkpointing=%s packing=%s liger=%s; outputs: %s",
        s.mode, s.deepspeed, deepspeed_config_path(s.deepspeed), torch.cuda.is_available(), s.bf16,
        s.gradient_checkpointing, s.packing, s.liger, {k: str(getattr(lay, k)) for k in FinetuneLayout.OUTPUTS},
    )

    outcome = train(s, cfg.model, tokenizer, examples, out, callbacks)
    trainer = outcome.trainer
    # Every rank takes part (ZeRO-3 gathers the shards); the main process writes into a
    # staging directory and renames it, so `model/` is whole or absent after a kill.
    staging = lay.model_staging
    trainer.save_model(str(staging))
    history = _loss_history(trainer)
    if _is_main():
        tokenizer.save_pretrained(str(staging))
        if lay.model.exists():
            shutil.rmtree(lay.model)
        os.replace(staging, lay.model)
        write_json(lay.loss_history, {
            **history,
            "resumed_from": str(outcome.resumed_from) if outcome.resumed_from else None,
            "steps_run_by_this_launch": outcome.steps_run,
            "first_step_of_this_launch": outcome.first_step,
            **outcome.progress.figures(),
        })
    log.info(
        "finetune done: %d steps (%d in this launch%s), loss %s -> %s; model in %s",
        history["global_step"], outcome.steps_run,
        f", resumed from {outcome.resumed_from.name}" if outcome.resumed_from else "",
        history["first_loss"], history["last_loss"], lay.model,
    )
    leave_process_group()
    return FinetuneResult(out, lay.model, lay.train_tokens, lay.loss_history,
                          outcome.resumed_from, outcome.steps_run, trainer)
