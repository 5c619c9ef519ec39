"""The cheap per-segment signals against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsft.method.ig import freeze, integrated_gradients
from segsft.method.token_stats import segment_token_stats, token_stats
from segsft.method.text import build_sequence, resolve_pattern
from tiny_model import tiny_qwen2

SOLUTION = ("We need half of one. That is 0.5.\n\nWait, as a fraction it is \\frac{1}{2}."
            "\n\nAlternatively, 1 divided by 2 gives the same. So the result is \\frac{1}{2}.")


@pytest.fixture(scope="module")
def seq(tokenizer):
    return build_sequence(tokenizer, "What is half of one?", SOLUTION, resolve_pattern("default"), "\\frac{1}{2}")


@pytest.fixture(scope="module")
def model(tokenizer):
    return freeze(tiny_qwen2(tokenizer, seed=2)).eval()


def test_nll_and_entropy_equal_a_plain_forward_with_full_logits(model, seq):
    ids = torch.as_tensor(seq.input_ids)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids[None]).logits[0].double(), -1)  # every position, whole vocabulary
    want_nll = np.r_[np.nan, -logp[:-1].gather(1, ids[1:, None]).squeeze(1).numpy()]
    want_ent = np.r_[np.nan, -(logp.exp() * logp).sum(-1)[:-1].numpy()]
    for chunk in (3, 1024):  # chunked over positions or not: the same numbers
        nll, ent = token_stats(model, ids, chunk=chunk)
        assert np.isnan(nll[0]) and np.isnan(ent[0])
        np.testing.assert_allclose(nll[1:], want_nll[1:], rtol=1e-4)
        np.testing.assert_allclose(ent[1:], want_ent[1:], rtol=1e-4)
    rows = segment_token_stats(seq.segment_tokens, nll, ent, None)
    for (a, b), r in zip(seq.segment_tokens, rows):
        assert r["nll_mean"] == pytest.approx(want_nll[a:b].mean(), rel=1e-4)
        assert r["entropy_mean"] == pytest.approx(want_ent[a:b].mean(), rel=1e-4)
        assert r["gxi_sum"] is None and r["gxi_abs_sum"] is None


def test_gradient_x_input_is_ig_with_the_single_node_one(model, seq, tokenizer):
    from segsft.run.models import pad_token_id

    pad_id = pad_token_id(tokenizer)
    n = int(seq.answer_positions[-1]) + 1
    ids, pos = torch.as_tensor(seq.input_ids[:n]), torch.as_tensor(seq.answer_positions)
    gxi = integrated_gradients(model, ids, pos, rule="gradient_x_input", steps=1, pad_id=pad_id).token_attr
    # Independently: (x - x') . grad f at x, with f the summed log-probability of the answer tokens.
    emb = model.get_input_embeddings()
    x = emb(ids).detach().requires_grad_(True)
    logp = torch.log_softmax(model(inputs_embeds=x[None]).logits[0], -1)
    f = logp[pos - 1].gather(1, ids[pos][:, None]).sum()
    (g,) = torch.autograd.grad(f, x)
    pad = emb.weight[pad_id]
    want = ((x - pad) * g).sum(-1).detach().double().numpy()
    np.testing.assert_allclose(gxi, want, rtol=1e-4, atol=1e-7)
    # Rules with the node 1 record it for free; Gauss-Legendre has no node at 1.
    for rule in ("linspace", "trapezoid", "adaptive_like"):
        if rule == "adaptive_like":
            from segsft.method.adaptive import AdaptiveSettings
            from segsft.method.ig import adaptive_integrated_gradients

            res = adaptive_integrated_gradients(model, ids, pos, AdaptiveSettings(max_steps=20, init_points=5), pad_id=pad_id)
        else:
            res = integrated_gradients(model, ids, pos, rule=rule, steps=5, pad_id=pad_id)
        np.testing.assert_allclose(res.grad_at_one, gxi, rtol=1e-6, atol=1e-9)
    assert integrated_gradients(model, ids, pos, rule="gauss_legendre", steps=4, pad_id=pad_id).grad_at_one is None
    rows = segment_token_stats(seq.segment_tokens, None, None, gxi)
    for (a, b), r in zip(seq.segment_tokens, rows):
        assert r["gxi_sum"] == pytest.approx(gxi[a:b].sum()) and r["gxi_abs_sum"] == pytest.approx(np.abs(gxi[a:b]).sum())
        assert r["nll_mean"] is None
