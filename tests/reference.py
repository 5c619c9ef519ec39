"""A plain restatement of the reference implementation, kept as the yardstick.

As the official script's attribution function does: one alpha per forward/backward pass,
full-vocabulary logits at every position, `torch.autograd.grad` with respect to the
interpolated inputs only (no weight gradients are formed), the `linspace` rule.
Tests compare the engine against it and bench/ times both; the pipeline never uses it.
(An earlier restatement called `f.backward()`, forming every weight's gradient as the
official code's unused single-point function does; that made the engine look 1.44x
faster where the official script is only 1.17x slower.)
"""

from __future__ import annotations

import numpy as np
import torch


def reference_ig(
    model: torch.nn.Module, input_ids: torch.Tensor, answer_positions: torch.Tensor, steps: int, pad_id: int
) -> tuple[np.ndarray, float, float]:
    """(a_t as float64 [L], f(x), f(x')) with a_k = linspace(0, 1, steps), weights 1/steps."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        x = emb(input_ids).unsqueeze(0)
        base = emb(torch.full_like(input_ids, pad_id)).unsqueeze(0)
    grads = torch.zeros_like(x, dtype=torch.float32)
    f_values = []
    for a in torch.linspace(0, 1, steps):
        z = (base + a * (x - base)).detach().requires_grad_(True)
        logits = model(inputs_embeds=z, use_cache=False).logits  # [1, L, V]
        logp = torch.log_softmax(logits.float(), dim=-1)
        f = logp[0, answer_positions - 1].gather(-1, input_ids[answer_positions].unsqueeze(-1)).sum()
        (g,) = torch.autograd.grad(f, z)
        grads += g.float()
        f_values.append(float(f.detach()))
    attr = ((x - base).float() * (grads / steps)).sum(-1)[0]
    return attr.double().cpu().numpy(), f_values[-1], f_values[0]
