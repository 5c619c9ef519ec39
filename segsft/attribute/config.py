"""The `attribute.*` settings: every problem at once, each saying what to change."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segsft.config_schema import AttributeConf, Settings


def check_attribute(cfg: "Settings") -> list[str]:
    from segsft.method.ig import BASELINES
    from segsft.method.quadrature import RULES
    from segsft.method.text import KEYWORD_PRESETS

    a, errs = cfg.attribute, []
    if a.rule not in RULES:
        errs.append(f"attribute.rule={a.rule!r}: use one of {list(RULES)}")
    if not isinstance(a.steps, int) or not (2 if a.rule == "trapezoid" else 1) <= a.steps <= 4096:
        errs.append(f"attribute.steps={a.steps!r}: use an integer in [{2 if a.rule == 'trapezoid' else 1}, 4096]")
    errs += check_adaptive(a)
    if a.rule == "adaptive":
        # The stop test decides with the select rule: its settings must be valid before any model loads.
        from segsft.method.selection_config import check_settings

        errs += [f"{e} (the adaptive rule's stop test uses the select settings)" for e in check_settings(cfg.select)]
    mbt = a.max_batch_tokens
    if mbt != "auto" and (not isinstance(mbt, int) or mbt < 0):
        errs.append(f"attribute.max_batch_tokens={mbt!r}: use auto or an integer >= 0 (0 = one point per pass)")
    if a.baseline not in BASELINES:
        errs.append(f"attribute.baseline={a.baseline!r}: use one of {list(BASELINES)}")
    if not isinstance(a.batch_alphas, int) or not 1 <= a.batch_alphas <= 4096:
        errs.append(f"attribute.batch_alphas={a.batch_alphas!r}: use an integer in [1, 4096]")
    if not 0 <= a.max_tokens <= 10_000_000:
        errs.append(f"attribute.max_tokens={a.max_tokens!r}: use an integer in [0, 10000000] (0 = no limit)")
    if not 1 <= a.flush_every <= 1_000_000:
        errs.append(f"attribute.flush_every={a.flush_every!r}: use an integer >= 1 (samples per flush)")
    if not 0 < a.flush_seconds <= 86400:
        errs.append(f"attribute.flush_seconds={a.flush_seconds!r}: use a number of seconds in (0, 86400]")
    if a.device != "auto" and not (a.device in ("cpu", "mps") or a.device.startswith("cuda")):
        errs.append(f"attribute.device={a.device!r}: use auto, cpu, cuda or cuda:<index>")
    elif a.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            errs.append(f"attribute.device={a.device!r} but no CUDA device is available here: use auto or cpu")
    from segsft.store.corpus import limit_problem

    if limit_problem("data.limit", cfg.data.limit):  # 0 would read no row, as evaluate.limit=0
        errs.append(limit_problem("data.limit", cfg.data.limit))
    if a.segment_pattern:
        import re

        try:
            re.compile(a.segment_pattern)
        except re.error as e:
            errs.append(f"attribute.segment_pattern={a.segment_pattern!r} is not a valid regex ({e})")
    elif a.segment_preset not in KEYWORD_PRESETS:
        errs.append(f"attribute.segment_preset={a.segment_preset!r}: use one of {sorted(KEYWORD_PRESETS)} or set attribute.segment_pattern")
    if "{answer}" not in (a.answer_suffix or "{answer}") or "\\boxed{" not in (a.answer_suffix or "\\boxed{"):
        errs.append("attribute.answer_suffix must contain \\boxed{ and the placeholder {answer}")
    if not cfg.data.path:
        errs.append("data.path is empty: point it to a JSONL or Parquet corpus, a dataset directory or hub:<dataset id>")
    else:
        from segsft.store.corpus import corpus_path_problem
        from segsft.store.hub import adapter_problem

        errs += [p for p in [corpus_path_problem(cfg.data.path), adapter_problem(cfg.data.adapter)] if p]
    from segsft.run.models import check_model_config

    errs += check_model_config(cfg.model)
    if not cfg.model.name_or_path:
        errs.append("model.name_or_path is empty: give a hub id or a local model directory")
    return errs


def rounding_floor(dtype: Any) -> tuple[str, float] | None:
    """(name, the smallest error bound worth asking for) of the attribution dtype: 2 units of
    rounding of its mantissa. None when the dtype is chosen at run time (auto) or unknown."""
    import torch

    from segsft.run.models import DTYPES

    if dtype is None or dtype not in DTYPES:
        return None
    return str(dtype), 2 * float(torch.finfo(DTYPES[dtype]).eps)


def check_adaptive(a: "AttributeConf") -> list[str]:
    """The adaptive rule's keys (checked whatever the rule, so a sweep fails early)."""
    from segsft.config_schema import AttributeConf
    from segsft.run.models import DTYPES

    d, errs = AttributeConf(), []

    def number(key: str, lo: float, hi: float, hint: str) -> None:
        v = getattr(a, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            errs.append(f"attribute.{key}={v!r}: {hint}")

    gap_range = (1e-9, 10.0)
    number("target_gap", *gap_range, f"use a number in [{gap_range[0]:g}, {gap_range[1]:g}], the error bound to reach "
                                     f"relative to |f(x) - f(x')| (e.g. {d.target_gap})")
    number("target_stability", 0.0, 1.0, "use a number in [0, 1], the share of decisions that must not change (e.g. 1.0)")
    number("max_borderline", 0.0, 1.0, "use a number in [0, 1], the share of a sample's segments that may be "
                                       "borderline when it is called converged (e.g. 0, the default)")
    from segsft.method.adaptive import MARGINS, REFINE_ON

    for key, allowed, what in (("margin", MARGINS, "how a decision is moved within its errors to call it borderline"),
                               ("refine_on", REFINE_ON, "where the adaptive rule's points go once its error bound is met")):
        if getattr(a, key) not in allowed:
            errs.append(f"attribute.{key}={getattr(a, key)!r}: use one of {', '.join(allowed)} ({what})")
    tg = a.target_gap
    floor = rounding_floor(a.dtype)
    # Below the range, the range's line says it all (one line per key).
    if isinstance(tg, (int, float)) and not isinstance(tg, bool) and floor and gap_range[0] <= tg < floor[1]:
        wider = next((w for w in ("float32", "float64") if rounding_floor(w)[1] < floor[1] and rounding_floor(w)[1] <= tg),
                     None)
        errs.append(f"attribute.target_gap={tg!r} is below the rounding floor of {floor[0]} ({floor[1]:.2g}: the "
                    f"local errors cannot be resolved finer in that precision); raise it to >= {floor[1]:.2g}"
                    + (f" or attribute in a wider dtype (attribute.dtype={wider})" if wider else ""))
    init = a.init_points
    if isinstance(init, bool) or not isinstance(init, int) or not 2 <= init <= 1025:
        errs.append(f"attribute.init_points={init!r}: use an integer in [2, 1025] (uniform starting nodes, e.g. 9)")
        init = d.init_points
    ms = a.max_steps
    if isinstance(ms, bool) or not isinstance(ms, int) or not 2 * init <= ms <= 16384:
        errs.append(f"attribute.max_steps={ms!r}: use an integer in [{2 * init}, 16384] (the most gradient evaluations "
                    f"per sample; the stability test needs at least twice attribute.init_points={init})")
    pr = a.per_round
    if pr is not None and (isinstance(pr, bool) or not isinstance(pr, int) or pr < 1):
        errs.append(f"attribute.per_round={pr!r}: use null (= the points per pass) or an integer >= 1")
    for key in ("stable_ranks", "consolidate"):
        if not isinstance(getattr(a, key), bool):
            errs.append(f"attribute.{key}={getattr(a, key)!r}: use true or false")
    dt = a.dtype
    if dt is not None and dt != "auto" and dt not in DTYPES:
        errs.append(f"attribute.dtype={dt!r}: use null (= model.dtype), auto or one of {sorted(DTYPES)}")
    return errs
