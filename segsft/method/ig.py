"""Integrated gradients of the answer log-probability w.r.t. the input embeddings.

docs/method.md step 5. The math only: no device placement, no launcher logic. The caller
passes a model already on its device; everything here follows the model's device.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np
import torch

from segsft.method.quadrature import quadrature

if TYPE_CHECKING:
    from segsft.method.adaptive import AdaptiveSettings
    from segsft.method.metrics import SegmentRule

BASELINES = ("pad", "zero", "mean", "pad_trace")


@dataclass(frozen=True)
class IGResult:
    token_attr: np.ndarray  # float64 [L], a_t
    answer_logprob: float  # f(x)
    baseline_logprob: float  # f(x')
    steps_used: int = 0  # gradient evaluations
    # The adaptive rule's stop test (None for the fixed rules).
    decision_stability: float | None = None
    converged: bool | None = None
    # g(1) per token, gradient x (input - baseline) at alpha = 1, when 1 is a node (else None).
    grad_at_one: np.ndarray | None = None
    # The adaptive rule only (else None): the error bound (sum of |local errors| / |f(1) - f(0)|),
    # and per segment the strength's error estimate and whether its decision is borderline
    # (within its error of flipping, or changed over the last doubling).
    error_bound: float | None = None
    strength_err: np.ndarray | None = None
    borderline: np.ndarray | None = None

    @property
    def completeness_gap(self) -> float | None:
        delta = self.answer_logprob - self.baseline_logprob
        if delta == 0:
            return None
        return abs(float(self.token_attr.sum()) - delta) / abs(delta)


def accum_dtype(model_dtype: torch.dtype) -> torch.dtype:
    """fp32 for the path arithmetic, or the model's own dtype when it is wider (fp64)."""
    return torch.float64 if model_dtype == torch.float64 else torch.float32


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Parameters need no gradient: backward then only runs down to the inputs."""
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_supports_logits_to_keep(model: torch.nn.Module) -> None:
    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        raise TypeError(
            f"{type(model).__name__}.forward has no `logits_to_keep` argument, so the pipeline "
            "cannot skip the full-vocabulary logits; use a transformers version and model class "
            "that support it (any decoder-only model of transformers >= 4.50)"
        )


def answer_logprob(
    model: torch.nn.Module, inputs_embeds: torch.Tensor, input_ids: torch.Tensor, positions: torch.Tensor
) -> torch.Tensor:
    """f for each row of `inputs_embeds` [B, L, d]: the summed log p of the tokens at
    `positions` (sorted, the last one is L - 1). Logits are computed only from the first
    answer position - 1 onwards, never for the whole sequence."""
    seq_len = inputs_embeds.shape[1]
    first = int(positions[0])
    keep = seq_len - first + 1
    out = model(inputs_embeds=inputs_embeds, logits_to_keep=keep, use_cache=False)
    # Row j of the kept logits is position first - 1 + j; it predicts token first + j.
    rows = positions - first
    logits = out.logits[:, rows, :]
    logits = logits.to(accum_dtype(logits.dtype))
    logp = torch.log_softmax(logits, dim=-1)
    target = input_ids[positions].view(1, -1, 1).expand(logp.shape[0], -1, 1)
    return logp.gather(-1, target).squeeze(-1).sum(-1)


def baseline_embeddings(
    model: torch.nn.Module, input_ids: torch.Tensor, baseline: str, pad_id: int | None,
    trace_tokens: tuple[int, int] | None = None,
) -> torch.Tensor:
    """x' [L, d]. `pad`: the pad embedding everywhere (docs/method.md step 5, the default);
    `zero`; `mean`: the mean embedding row; `pad_trace`: the pad embedding on the trace's
    tokens `trace_tokens` [start, end) only, the prompt and answer suffix kept as they are
    (this changes what is attributed: only the trace's tokens get attribution)."""
    emb = model.get_input_embeddings()
    if baseline == "zero":
        return torch.zeros(input_ids.shape[0], emb.weight.shape[1], dtype=emb.weight.dtype, device=emb.weight.device)
    if baseline == "mean":
        return emb.weight.mean(0, keepdim=True).expand(input_ids.shape[0], -1).clone()
    if baseline in ("pad", "pad_trace"):
        if pad_id is None:
            raise ValueError(f"baseline {baseline!r} needs a pad (or eos) token id; set attribute.baseline=zero "
                             "or give the tokenizer a pad token")
        base = emb(torch.full_like(input_ids, pad_id))
        if baseline == "pad_trace":
            if trace_tokens is None:
                raise ValueError("baseline 'pad_trace' needs the trace's token span")
            lo, hi = trace_tokens
            keep = torch.ones(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
            keep[lo:hi] = False
            base = torch.where(keep.unsqueeze(-1), emb(input_ids), base)
        return base
    raise ValueError(f"attribute.baseline={baseline!r}: use one of {list(BASELINES)}")


@dataclass(frozen=True)
class PathGradients:
    """Per path point k: g_k[t] = sum_d (x - x')[t, d] * df/dz[t, d] at z = x' + a_k (x - x')."""

    alphas: np.ndarray  # float64 [K]
    token_grads: np.ndarray  # float64 [K, L]
    logprobs: np.ndarray  # float64 [K], f at each point
    answer_logprob: float  # f(x)
    baseline_logprob: float  # f(x')

    def integrate(self, weights: np.ndarray) -> IGResult:
        at_one = np.flatnonzero(self.alphas == 1.0)
        return IGResult(weights @ self.token_grads, self.answer_logprob, self.baseline_logprob, len(self.alphas),
                        grad_at_one=self.token_grads[at_one[0]] if len(at_one) else None)


class IGPath:
    """The straight path from x' to x of one sequence: `path(alphas)` -> (f [K], g [K, L]).

    `input_ids` [L] must end at the last answer token (nothing after it is fed).
    `batch_alphas` points go through the model in one forward/backward pass; only that
    pass records a graph, the path arithmetic does not (fp32, or fp64 for an fp64 model).
    Parameters should be frozen (see `freeze`) and dropout off. Reducing each point to
    [L] keeps memory at K x L. `evaluations` counts gradient evaluations.
    """

    def __init__(self, model: torch.nn.Module, input_ids: torch.Tensor, answer_positions: torch.Tensor, *,
                 baseline: str = "pad", pad_id: int | None = None, trace_tokens: tuple[int, int] | None = None,
                 batch_alphas: int = 4):
        if answer_positions.numel() == 0:
            raise ValueError("no answer position to attribute to")
        if int(answer_positions[-1]) != input_ids.shape[0] - 1:
            raise ValueError("input_ids must end at the last answer token")
        self.model, self.input_ids, self.answer_positions = model, input_ids, answer_positions
        self.model_dtype = model.get_input_embeddings().weight.dtype
        self.acc = accum_dtype(self.model_dtype)
        with torch.no_grad():
            self.x = model.get_input_embeddings()(input_ids).to(self.acc)
            self.base = baseline_embeddings(model, input_ids, baseline, pad_id, trace_tokens).to(self.acc)
        self.delta = self.x - self.base
        self.batch_alphas = max(1, batch_alphas)
        self.evaluations = 0

    def _points(self, alphas: np.ndarray) -> Iterator[torch.Tensor]:
        """z = x' + a (x - x') for `batch_alphas` of `alphas` at a time: fp32 arithmetic, then
        the model's dtype."""
        a_all = torch.tensor(np.asarray(alphas, dtype=np.float64), dtype=self.acc, device=self.x.device)
        for lo in range(0, len(a_all), self.batch_alphas):
            a = a_all[lo : lo + self.batch_alphas]
            yield (self.base.unsqueeze(0) + a.view(-1, 1, 1) * self.delta.unsqueeze(0)).to(self.model_dtype)

    @torch.no_grad()
    def __call__(self, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grads, fs = [], []
        for z in self._points(alphas):
            z.requires_grad_(True)
            with torch.enable_grad():
                f = answer_logprob(self.model, z, self.input_ids, self.answer_positions)
                (g,) = torch.autograd.grad(f.sum(), z)
            grads.append((g.to(self.acc) * self.delta.unsqueeze(0)).sum(-1).double().cpu())
            fs.append(f.detach().double().cpu())
            del z, f, g
        self.evaluations += len(alphas)
        return torch.cat(fs).numpy(), torch.cat(grads).numpy()

    @torch.no_grad()
    def logprobs(self, alphas: np.ndarray) -> np.ndarray:
        """f only (forward passes, no gradient): about a third of the cost of `__call__`."""
        out = [answer_logprob(self.model, z, self.input_ids, self.answer_positions).double().cpu()
               for z in self._points(alphas)]
        return torch.cat(out).numpy()


def path_token_grads(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    answer_positions: torch.Tensor,
    alphas: np.ndarray,
    *,
    baseline: str = "pad",
    pad_id: int | None = None,
    batch_alphas: int = 4,
    trace_tokens: tuple[int, int] | None = None,
) -> PathGradients:
    """The integrand of IG at each of `alphas` (see `IGPath`), with f at both ends."""
    path = IGPath(model, input_ids, answer_positions, baseline=baseline, pad_id=pad_id,
                  trace_tokens=trace_tokens, batch_alphas=batch_alphas)
    alphas = np.asarray(alphas, dtype=np.float64)
    logprobs, token_grads = path(alphas)
    at = {float(a): float(f) for a, f in zip(alphas, logprobs)}
    if 0.0 in at and 1.0 in at:
        f_x, f_base = at[1.0], at[0.0]
    else:
        f_base, f_x = (float(v) for v in path.logprobs(np.array([0.0, 1.0])))
    return PathGradients(alphas, token_grads, logprobs, f_x, f_base)


def integrated_gradients(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    answer_positions: torch.Tensor,
    *,
    rule: str = "gauss_legendre",
    steps: int = 16,
    baseline: str = "pad",
    pad_id: int | None = None,
    batch_alphas: int = 4,
    trace_tokens: tuple[int, int] | None = None,
) -> IGResult:
    """Per-token IG attributions of f = sum log p(answer tokens) for one sequence with a
    fixed rule: a_t = sum_k w_k g_k[t] over the nodes and weights of `rule` (fp64 weights)."""
    alphas, weights = quadrature(rule, steps)
    path = path_token_grads(model, input_ids, answer_positions, alphas, baseline=baseline,
                            pad_id=pad_id, batch_alphas=batch_alphas, trace_tokens=trace_tokens)
    return path.integrate(weights)


def adaptive_integrated_gradients(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    answer_positions: torch.Tensor,
    settings: "AdaptiveSettings",
    *,
    decide: "SegmentRule | None" = None,
    baseline: str = "pad",
    pad_id: int | None = None,
    batch_alphas: int = 1,
    trace_tokens: tuple[int, int] | None = None,
) -> IGResult:
    """IG with `attribute.rule=adaptive`: refine until the error bound and the decisions
    (`decide`, the select stage's rule as a `SegmentRule`; None = the bound only) meet their
    targets, or max_steps. `batch_alphas` subintervals are bisected per round, their
    midpoints in one pass."""
    from segsft.method.adaptive import refine

    path = IGPath(model, input_ids, answer_positions, baseline=baseline, pad_id=pad_id,
                  trace_tokens=trace_tokens, batch_alphas=batch_alphas)
    test = None if decide is None else settings.stop_test(decide)
    res = refine(path, init_points=settings.init_points, max_steps=settings.max_steps,
                 per_round=settings.per_round or batch_alphas,
                 stop=test if test is not None else (lambda h: h[-1].error_sum <= settings.target_gap),
                 focus=None if test is None else test.focus)
    v = test.verdict(res.history) if test is not None else None
    bound = res.final.error_sum if np.isfinite(res.final.error_sum) else None
    return IGResult(res.final.token_attr, float(res.logprobs[-1]), float(res.logprobs[0]), path.evaluations,
                    None if v is None else v.decision_stability, res.converged,
                    grad_at_one=res.token_grads[-1],  # nodes sorted: the last is 1
                    error_bound=bound, strength_err=None if v is None else v.strength_err,
                    borderline=None if v is None else v.borderline | ~v.settled)
