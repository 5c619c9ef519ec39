"""Dispatch from the composed Hydra config to the stages, with all config errors at once."""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from segsft.config_schema import Settings, SettingsError
from segsft.run.dist import is_main, is_sharded, rank_and_world, shard_names
from segsft.errors import PipelineError
from segsft.run.stage_api import EXTRA, ORDER, load

log = logging.getLogger("segsft")

STAGES = (*ORDER, *EXTRA, "all")


class ConfigError(PipelineError):
    """One or more configuration problems, each saying what to change."""


def shard_stage_problem(stage: str, shard: Any, names: tuple[str, str] = ("shard.index", "shard.count")) -> str | None:
    """One line when the shard keys (set by `names`, `dist.shard_names`) are set for a stage that
    does not run in shards; else None."""
    if not is_sharded(shard) or stage not in STAGES:
        return None
    if all(getattr(load(n), "sharded", False) for n in (ORDER if stage == "all" else [stage])):
        return None
    return (f"{names[0]}/{names[1]} with stage={stage}: only stage=attribute, stage=evaluate and stage=generate "
            f"run in shards (the others read every shard's output in one job): drop {names[0]} and {names[1]} here")


def run_stage(cfg: DictConfig) -> Any:
    """Check the config of every stage asked for (once), log it resolved, run the stages."""
    stage = cfg.stage
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r}: use one of {list(STAGES)}")
    from segsft.run.path_keys import path_key_problems

    # Typed once, here: the stages and everything below them get these Settings, never `cfg`.
    try:
        settings = Settings.of(cfg)
    except SettingsError as e:
        raise ConfigError(f"{e}: see segsft/config_schema.py for every key and its type") from None
    # Directory and name keys first, once: every stage writes or reads under them.
    errors = path_key_problems(settings)
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else "invalid configuration:\n  - " + "\n  - ".join(errors))
    stages = [load(n) for n in (ORDER if stage == "all" else [stage])]
    # Which share of the work this process does: one line, before anything loads.
    names = shard_names(settings.attribute, settings.shard)
    rank, world = rank_and_world(settings.shard, names)
    problem = shard_stage_problem(stage, settings.shard, names)
    if problem:
        raise ConfigError(problem)
    errors = list(dict.fromkeys(e for s in stages for e in s.check(settings)))  # a shared key is reported once
    if errors:
        raise ConfigError(errors[0] if len(errors) == 1 else "invalid configuration:\n  - " + "\n  - ".join(errors))
    if stage == "all" and world > 1:
        raise ConfigError(
            "stage=all runs in one process; under torchrun run the stages one by one: "
            "stage=attribute (sharded over ranks), then stage=select, then stage=finetune"
        )
    log.info("rank %d/%d resolved config:\n%s", rank, world, OmegaConf.to_yaml(cfg, resolve=True))
    result = None
    for s in stages:
        log.info("stage %s: outputs %s", s.name, {k: str(v) for k, v in s.outputs(settings).items()})
        if getattr(s, "rank0_only", False) and rank != 0:
            continue
        result = s.run(settings, rank, world)
    if stage == "all" and is_main():
        from segsft.run.recap import recap, summarize
        from segsft.store.io import write_json
        from segsft.store.layout import RunLayout

        data = recap(settings)
        write_json(RunLayout(settings.run_dir).recap, data)
        text = summarize(data)
        print("\n" + text, flush=True)
    return result
