"""How many path points go through the model at once, and what to do when memory runs out.

Resource handling around the IG math in `ig.py`: a token budget per pass, gradient
checkpointing for sequences too long for one point, and halving on CUDA out-of-memory.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any, Iterator

import torch

from segsft.method.adaptive import AdaptiveSettings
from segsft.method.metrics import SegmentRule
from segsft.method.ig import IGResult, adaptive_integrated_gradients, integrated_gradients

log = logging.getLogger(__name__)

# Measured (bench/): on CPU one point per pass is fastest, batching only adds memory
# traffic; on a GPU several points per pass fill the device.
AUTO_BUDGET = {"cpu": 0, "cuda": 16384}


@dataclass(frozen=True)
class BatchPlan:
    alphas_per_pass: int
    checkpointing: bool


def resolve_budget(max_batch_tokens: int | str, device: torch.device) -> int:
    """`auto` -> a per-device default; 0 means one point per pass, no checkpointing."""
    if max_batch_tokens == "auto":
        return AUTO_BUDGET.get(device.type, 0)
    return int(max_batch_tokens)


def plan(seq_len: int, steps: int, batch_alphas: int, max_batch_tokens: int) -> BatchPlan:
    """Points per pass: as many as fit `max_batch_tokens` (at most `batch_alphas` and
    `steps`); a sequence longer than the budget runs one point with checkpointing."""
    if max_batch_tokens <= 0:
        return BatchPlan(1, False)
    fit = max_batch_tokens // seq_len
    return BatchPlan(max(1, min(fit, batch_alphas, steps)), fit < 1)


@contextlib.contextmanager
def checkpointing(model: Any, enabled: bool) -> Iterator[None]:
    """Non-reentrant gradient checkpointing for the duration of one sequence.

    HF only checkpoints in train mode; the models attributed here have zero dropout,
    which `check_no_dropout` makes sure of, so train mode changes nothing else.
    """
    if not enabled:
        yield
        return
    check_no_dropout(model)
    # transformers >= 5.2x names it activation checkpointing; older releases gradient.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        yield
    finally:
        (getattr(model, "activation_checkpointing_disable", None) or model.gradient_checkpointing_disable)()
        model.eval()


def check_no_dropout(model: Any) -> None:
    rates = {k: v for k, v in model.config.to_dict().items() if "dropout" in k and isinstance(v, float) and v > 0}
    if rates:
        raise ValueError(
            f"gradient checkpointing needs train mode, and this model has dropout {rates}; "
            "set attribute.max_batch_tokens=0 to attribute without checkpointing"
        )


_warned_oom = False


def attribute_sequence(
    model: Any, input_ids: torch.Tensor, answer_positions: torch.Tensor, *, rule: str, steps: int,
    baseline: str, pad_id: int | None, batch_alphas: int, max_batch_tokens: int,
    adaptive: AdaptiveSettings | None = None, decide: SegmentRule | None = None,
    trace_tokens: tuple[int, int] | None = None,
) -> IGResult:
    """IG of one sequence with the batch planned from the token budget; on CUDA
    out-of-memory the points per pass are halved (then checkpointing is turned on).
    `rule=adaptive` needs `adaptive` (its settings) and takes `decide` for its stop test."""
    global _warned_oom
    most = (adaptive or AdaptiveSettings()).max_steps if rule == "adaptive" else steps
    p = plan(int(input_ids.shape[0]), most, batch_alphas, max_batch_tokens)
    while True:
        try:
            with checkpointing(model, p.checkpointing):
                if rule == "adaptive":
                    return adaptive_integrated_gradients(
                        model, input_ids, answer_positions, adaptive or AdaptiveSettings(), decide=decide,
                        baseline=baseline, pad_id=pad_id, batch_alphas=p.alphas_per_pass, trace_tokens=trace_tokens)
                return integrated_gradients(
                    model, input_ids, answer_positions, rule=rule, steps=steps, baseline=baseline,
                    pad_id=pad_id, batch_alphas=p.alphas_per_pass, trace_tokens=trace_tokens,
                )
        except torch.OutOfMemoryError:
            if p.alphas_per_pass == 1 and p.checkpointing:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            smaller = BatchPlan(max(1, p.alphas_per_pass // 2), p.checkpointing or p.alphas_per_pass == 1)
            if not _warned_oom:
                log.warning(
                    "out of memory at %d tokens x %d points per pass; retrying with %d%s (logged once; "
                    "lower attribute.max_batch_tokens to avoid the retries)",
                    input_ids.shape[0], p.alphas_per_pass, smaller.alphas_per_pass,
                    " and gradient checkpointing" if smaller.checkpointing else "",
                )
                _warned_oom = True
            p = smaller
