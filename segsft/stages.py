"""Dispatch from the composed Hydra config to the stages, with all config errors at once."""

from __future__ import annotations

import logging
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

from segsft.dist import is_main, rank_and_world
from segsft.errors import PipelineError

log = logging.getLogger("segsft")

STAGES = ("attribute", "select", "finetune", "report", "all")


class ConfigError(PipelineError):
    """One or more configuration problems, each saying what to change."""


def check_attribute(cfg: Any) -> list[str]:
    from segsft.attribute.ig import BASELINES
    from segsft.attribute.quadrature import RULES
    from segsft.text import KEYWORD_PRESETS

    a, errs = cfg.attribute, []
    if a.rule not in RULES:
        errs.append(f"attribute.rule={a.rule!r}: use one of {list(RULES)}")
    if not isinstance(a.steps, int) or not (2 if a.rule == "trapezoid" else 1) <= a.steps <= 4096:
        errs.append(f"attribute.steps={a.steps!r}: use an integer in [{2 if a.rule == 'trapezoid' else 1}, 4096]")
    errs += check_adaptive(a)
    mbt = a.get("max_batch_tokens", "auto")
    if mbt != "auto" and (not isinstance(mbt, int) or mbt < 0):
        errs.append(f"attribute.max_batch_tokens={mbt!r}: use auto or an integer >= 0 (0 = one point per pass)")
    if a.baseline not in BASELINES:
        errs.append(f"attribute.baseline={a.baseline!r}: use one of {list(BASELINES)}")
    if not isinstance(a.batch_alphas, int) or a.batch_alphas < 1:
        errs.append(f"attribute.batch_alphas={a.batch_alphas!r}: use an integer >= 1")
    if a.get("segment_pattern"):
        import re

        try:
            re.compile(a.segment_pattern)
        except re.error as e:
            errs.append(f"attribute.segment_pattern={a.segment_pattern!r} is not a valid regex ({e})")
    elif a.segment_preset not in KEYWORD_PRESETS:
        errs.append(f"attribute.segment_preset={a.segment_preset!r}: use one of {sorted(KEYWORD_PRESETS)} or set attribute.segment_pattern")
    if "{answer}" not in (a.answer_suffix or "{answer}") or "\\boxed{" not in (a.answer_suffix or "\\boxed{"):
        errs.append("attribute.answer_suffix must contain \\boxed{ and the placeholder {answer}")
    if not cfg.data.get("path"):
        errs.append("data.path is empty: point it to a JSONL or Parquet corpus")
    if not cfg.model.get("name_or_path"):
        errs.append("model.name_or_path is empty: give a hub id or a local model directory")
    return errs


def check_adaptive(a: Any) -> list[str]:
    """The adaptive rule's keys (checked whatever the rule, so a sweep fails early)."""
    from segsft.attribute.adaptive import AdaptiveSettings
    from segsft.models import DTYPES

    d, errs = AdaptiveSettings(), []

    def number(key: str, lo: float, hi: float, hint: str) -> None:
        v = a.get(key, getattr(d, key))
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            errs.append(f"attribute.{key}={v!r}: {hint}")

    number("target_gap", 1e-9, 10.0, "use a number in (0, 10], the completeness gap to reach (e.g. 0.05)")
    number("target_stability", 0.0, 1.0, "use a number in [0, 1], the share of decisions that must not change (e.g. 0.95)")
    init = a.get("init_points", d.init_points)
    if isinstance(init, bool) or not isinstance(init, int) or not 2 <= init <= 1025:
        errs.append(f"attribute.init_points={init!r}: use an integer in [2, 1025] (uniform starting nodes, e.g. 9)")
        init = d.init_points
    ms = a.get("max_steps", d.max_steps)
    if isinstance(ms, bool) or not isinstance(ms, int) or not init <= ms <= 16384:
        errs.append(f"attribute.max_steps={ms!r}: use an integer in [attribute.init_points={init}, 16384] "
                    "(the most gradient evaluations per sample)")
    if not isinstance(a.get("stable_ranks", d.stable_ranks), bool):
        errs.append(f"attribute.stable_ranks={a.get('stable_ranks')!r}: use true or false")
    dt = a.get("dtype")
    if dt is not None and dt != "auto" and dt not in DTYPES:
        errs.append(f"attribute.dtype={dt!r}: use null (= model.dtype), auto or one of {sorted(DTYPES)}")
    return errs


def _stage_fns() -> dict[str, tuple[Callable[[Any], list[str]], Callable[[Any], Any]]]:
    def attribute(cfg: Any) -> Any:
        from segsft.attribute import AttributeStage

        rank, world = rank_and_world()
        return AttributeStage(OmegaConf.to_container(cfg, resolve=True)).run(rank, world)

    def select(cfg: Any) -> Any:
        from segsft.select import run

        return run(cfg)

    def finetune(cfg: Any) -> Any:
        from segsft.finetune import run

        return run(cfg)

    def report(cfg: Any) -> Any:
        from segsft.report import run

        if not is_main():  # one page per run, not one per rank
            return None
        path = run(cfg)
        print(f"report: {path}", flush=True)
        return path

    def check_report(cfg: Any) -> list[str]:
        from segsft.report import check_config

        return check_config(cfg)

    def check_select(cfg: Any) -> list[str]:
        from segsft.select import check_config

        return check_config(cfg)

    def check_finetune(cfg: Any) -> list[str]:
        from segsft.finetune import check_config

        return check_config(cfg)

    return {
        "attribute": (check_attribute, attribute),
        "select": (check_select, select),
        "finetune": (check_finetune, finetune),
        "report": (check_report, report),
    }


def run_stage(cfg: DictConfig) -> Any:
    """Check the config of every stage asked for, log it resolved, run the stages."""
    stage = cfg.stage
    if stage not in STAGES:
        raise ConfigError(f"stage={stage!r}: use one of {list(STAGES)}")
    fns = _stage_fns()
    names = ["attribute", "select", "finetune", "report"] if stage == "all" else [stage]
    errors = [e for n in names for e in fns[n][0](cfg)]
    if errors:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(errors))
    rank, world = rank_and_world()
    if stage == "all" and world > 1:
        raise ConfigError(
            "stage=all runs in one process; under torchrun run the stages one by one: "
            "stage=attribute (sharded over ranks), then stage=select, then stage=finetune"
        )
    log.info("rank %d/%d resolved config:\n%s", rank, world, OmegaConf.to_yaml(cfg, resolve=True))
    result = None
    for n in names:
        log.info("stage %s: outputs under %s", n, {"attribute": f"{cfg.run_dir}/attribution",
                                                    "select": cfg.selection_dir, "finetune": cfg.finetune_dir,
                                                    "report": cfg.report.path}[n])
        result = fns[n][1](cfg)
    if stage == "all" and rank == 0:
        from segsft.summary import summarize

        text = summarize(cfg)
        print("\n" + text, flush=True)
    return result
