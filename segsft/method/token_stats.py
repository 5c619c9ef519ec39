"""Cheap per-token signals from one forward pass of the unperturbed sequence (no gradient).

For every position t >= 1: nll[t] = -log p(x_t | x_<t) (natural log) and entropy[t], the
entropy of the distribution that predicts x_t (the one at position t - 1). The transformer
body runs once; the output layer is applied `chunk` positions at a time, so the logits of the
whole vocabulary are never in memory for the whole sequence. Per segment (docs/method.md step 6's
spans): the means over its tokens, and gradient x input at alpha = 1 (the IG integrand there,
which the path evaluated anyway when 1 is one of its nodes).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch

from segsft.schemas import TOKEN_STAT_COLUMNS


def _body(model: Any) -> Any:
    return model.get_decoder() if hasattr(model, "get_decoder") else model.base_model


@torch.no_grad()
def token_stats(model: Any, input_ids: torch.Tensor, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(nll [L], entropy [L]) float64; position 0 (nothing predicts it) is NaN."""
    n = int(input_ids.shape[0])
    nll = np.full(n, np.nan)
    ent = np.full(n, np.nan)
    if n < 2:
        return nll, ent
    hidden = _body(model)(input_ids=input_ids.unsqueeze(0)).last_hidden_state[0]
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)
    for lo in range(0, n - 1, chunk):
        hi = min(n - 1, lo + chunk)
        logits = head(hidden[lo:hi]).float()
        if cap:  # Gemma-2 style soft-capping, as the model's own forward applies it
            logits = torch.tanh(logits / cap) * cap
        logp = torch.log_softmax(logits, dim=-1)
        target = input_ids[lo + 1 : hi + 1].unsqueeze(1)
        nll[lo + 1 : hi + 1] = (-logp.gather(1, target).squeeze(1)).double().cpu().numpy()
        ent[lo + 1 : hi + 1] = (-(logp.exp() * logp).sum(-1)).double().cpu().numpy()
        del logits, logp
    return nll, ent


def segment_token_stats(segment_tokens: Sequence[tuple[int, int]], nll: np.ndarray | None, entropy: np.ndarray | None,
                        gxi: np.ndarray | None) -> list[dict]:
    """Per segment: nll_mean, entropy_mean, gxi_sum, gxi_abs_sum (None where not computed or
    the segment has no token)."""
    out = []
    for start, end in segment_tokens:
        row: dict[str, Any] = dict.fromkeys(TOKEN_STAT_COLUMNS)
        if end > start:
            if nll is not None:
                row["nll_mean"] = _mean(nll[start:end])
                row["entropy_mean"] = _mean(entropy[start:end])
            if gxi is not None:
                row["gxi_sum"] = float(gxi[start:end].sum())
                row["gxi_abs_sum"] = float(np.abs(gxi[start:end]).sum())
        out.append(row)
    return out


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    v = float(x.mean()) if len(x) else None
    return v if v is None or math.isfinite(v) else None
