"""Integrated gradients of the answer log-probability w.r.t. the input embeddings.

DESIGN step 5. The math only: no device placement, no launcher logic. The caller
passes a model already on its device; everything here follows the model's device.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from segsft.attribute.quadrature import quadrature

BASELINES = ("pad", "zero")


@dataclass(frozen=True)
class IGResult:
    token_attr: np.ndarray  # float64 [L], a_t
    answer_logprob: float  # f(x)
    baseline_logprob: float  # f(x')

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


def baseline_embeddings(model: torch.nn.Module, input_ids: torch.Tensor, baseline: str, pad_id: int | None) -> torch.Tensor:
    emb = model.get_input_embeddings()
    if baseline == "zero":
        return torch.zeros(input_ids.shape[0], emb.weight.shape[1], dtype=emb.weight.dtype, device=emb.weight.device)
    if baseline == "pad":
        if pad_id is None:
            raise ValueError("baseline 'pad' needs a pad (or eos) token id; set attribute.baseline=zero or give the tokenizer a pad token")
        return emb(torch.full_like(input_ids, pad_id))
    raise ValueError(f"attribute.baseline={baseline!r}: use one of {list(BASELINES)}")


@torch.no_grad()
def _endpoint_logprobs(model: Any, x: torch.Tensor, base: torch.Tensor, ids: torch.Tensor, pos: torch.Tensor) -> tuple[float, float]:
    f = answer_logprob(model, torch.stack([x, base]), ids, pos)
    return float(f[0]), float(f[1])


@dataclass(frozen=True)
class PathGradients:
    """Per path point k: g_k[t] = sum_d (x - x')[t, d] * df/dz[t, d] at z = x' + a_k (x - x')."""

    alphas: np.ndarray  # float64 [K]
    token_grads: np.ndarray  # float64 [K, L]
    logprobs: np.ndarray  # float64 [K], f at each point
    answer_logprob: float  # f(x)
    baseline_logprob: float  # f(x')

    def integrate(self, weights: np.ndarray) -> IGResult:
        return IGResult(weights @ self.token_grads, self.answer_logprob, self.baseline_logprob)


@torch.no_grad()
def path_token_grads(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    answer_positions: torch.Tensor,
    alphas: np.ndarray,
    *,
    baseline: str = "pad",
    pad_id: int | None = None,
    batch_alphas: int = 4,
) -> PathGradients:
    """The integrand of IG at each of `alphas`, reduced over the embedding dimension.

    `input_ids` [L] must end at the last answer token (nothing after it is fed).
    `batch_alphas` points go through the model in one forward/backward pass; only that
    pass records a graph, the path arithmetic does not. Parameters should be frozen
    (see `freeze`) and dropout off. Reducing each point to [L] keeps memory at K x L.
    """
    if answer_positions.numel() == 0:
        raise ValueError("no answer position to attribute to")
    if int(answer_positions[-1]) != input_ids.shape[0] - 1:
        raise ValueError("input_ids must end at the last answer token")
    model_dtype = model.get_input_embeddings().weight.dtype
    acc = accum_dtype(model_dtype)
    alphas = np.asarray(alphas, dtype=np.float64)
    x = model.get_input_embeddings()(input_ids).to(acc)
    base = baseline_embeddings(model, input_ids, baseline, pad_id).to(acc)
    delta = x - base
    a_all = torch.tensor(alphas, dtype=acc, device=input_ids.device)
    grads, fs = [], []
    step = max(1, batch_alphas)
    for lo in range(0, len(alphas), step):
        a = a_all[lo : lo + step]
        z = (base.unsqueeze(0) + a.view(-1, 1, 1) * delta.unsqueeze(0)).to(model_dtype)
        z.requires_grad_(True)
        with torch.enable_grad():
            f = answer_logprob(model, z, input_ids, answer_positions)
            (g,) = torch.autograd.grad(f.sum(), z)
        grads.append((g.to(acc) * delta.unsqueeze(0)).sum(-1).double().cpu())
        fs.append(f.detach().double().cpu())
        del z, f, g
    token_grads = torch.cat(grads).numpy()
    logprobs = torch.cat(fs).numpy()
    at = {float(a): float(f) for a, f in zip(alphas, logprobs)}
    if 0.0 in at and 1.0 in at:
        f_x, f_base = at[1.0], at[0.0]
    else:
        f_x, f_base = _endpoint_logprobs(model, x.to(model_dtype), base.to(model_dtype), input_ids, answer_positions)
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
) -> IGResult:
    """Per-token IG attributions of f = sum log p(answer tokens) for one sequence:
    a_t = sum_k w_k g_k[t] over the nodes and weights of `rule` (fp64 weights)."""
    alphas, weights = quadrature(rule, steps)
    path = path_token_grads(model, input_ids, answer_positions, alphas, baseline=baseline,
                            pad_id=pad_id, batch_alphas=batch_alphas)
    return path.integrate(weights)
