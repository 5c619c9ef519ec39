"""The IG engine (docs/method.md step 5) against independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segsft.method.ig import freeze, integrated_gradients
from segsft.method.quadrature import quadrature
from reference import reference_ig
from segsft.method.text import build_sequence, resolve_pattern
from tiny_model import tiny_qwen2

SOLUTION = (
    "We need half of one. That is 0.5.\n\nWait, as a fraction it is \\frac{1}{2}."
    "\n\nAlternatively, 1 divided by 2 gives the same. So the result is \\frac{1}{2}."
)


@pytest.fixture(scope="module")
def sample(tokenizer):
    seq = build_sequence(tokenizer, "What is half of one?", SOLUTION, resolve_pattern("default"), "\\frac{1}{2}")
    n = int(seq.answer_positions[-1]) + 1
    return torch.as_tensor(seq.input_ids[:n]), torch.as_tensor(seq.answer_positions)


@pytest.fixture(scope="module")
def model(tokenizer):
    return freeze(tiny_qwen2(tokenizer, seed=1))


def _captum(model, ids, pos, pad_id, method, steps):
    from captum.attr import LayerIntegratedGradients

    def f(input_ids):
        logp = torch.log_softmax(model(input_ids=input_ids).logits.float(), -1)
        return logp[:, pos - 1].gather(-1, input_ids[:, pos].unsqueeze(-1)).squeeze(-1).sum(-1)

    lig = LayerIntegratedGradients(f, model.get_input_embeddings())
    attr = lig.attribute(ids[None], baselines=torch.full_like(ids, pad_id)[None], method=method, n_steps=steps, internal_batch_size=steps)
    return attr.sum(-1)[0].double().numpy()


def _close(a, b, tol=1e-4):
    scale = np.abs(b).max()
    assert scale > 0
    assert np.abs(a - b).max() <= tol * scale, np.abs(a - b).max() / scale


@pytest.mark.parametrize("steps", [8, 20])
def test_gauss_legendre_matches_captum(model, tokenizer, sample, steps):
    ids, pos = sample
    ours = integrated_gradients(model, ids, pos, rule="gauss_legendre", steps=steps, pad_id=tokenizer.pad_token_id, batch_alphas=3)
    _close(ours.token_attr, _captum(model, ids, pos, tokenizer.pad_token_id, "gausslegendre", steps))


def test_trapezoid_matches_captum_rescaled(model, tokenizer, sample):
    ids, pos = sample
    n = 12
    ours = integrated_gradients(model, ids, pos, rule="trapezoid", steps=n, pad_id=tokenizer.pad_token_id, batch_alphas=5)
    theirs = _captum(model, ids, pos, tokenizer.pad_token_id, "riemann_trapezoid", n) * n / (n - 1)
    _close(ours.token_attr, theirs)


def test_linspace_matches_reference_loop(model, tokenizer, sample):
    ids, pos = sample
    ours = integrated_gradients(model, ids, pos, rule="linspace", steps=10, pad_id=tokenizer.pad_token_id, batch_alphas=4)
    ref_model = tiny_qwen2(tokenizer, seed=1)  # unfrozen, as the reference runs it
    ref, f_x, f_base = reference_ig(ref_model, ids, pos, 10, tokenizer.pad_token_id)
    _close(ours.token_attr, ref)
    assert ours.answer_logprob == pytest.approx(f_x, abs=1e-5)
    assert ours.baseline_logprob == pytest.approx(f_base, abs=1e-5)


def test_completeness_in_float64(tokenizer, sample):
    ids, pos = sample
    m = freeze(tiny_qwen2(tokenizer, seed=2, dtype=torch.float64))
    res = integrated_gradients(m, ids, pos, rule="gauss_legendre", steps=64, pad_id=tokenizer.pad_token_id, batch_alphas=16)
    assert res.completeness_gap < 1e-6
    # The paper's linspace rule is visibly biased at the same model (docs/method.md, numerical notes).
    lin = integrated_gradients(m, ids, pos, rule="linspace", steps=50, pad_id=tokenizer.pad_token_id, batch_alphas=25)
    assert lin.completeness_gap > 10 * res.completeness_gap
    assert lin.answer_logprob == pytest.approx(res.answer_logprob, abs=1e-12)


def test_batching_does_not_change_scores(model, tokenizer, sample):
    ids, pos = sample
    runs = [integrated_gradients(model, ids, pos, rule="gauss_legendre", steps=7, pad_id=tokenizer.pad_token_id, batch_alphas=b).token_attr for b in (1, 3, 7)]
    _close(runs[1], runs[0], 1e-5)
    _close(runs[2], runs[0], 1e-5)


def test_only_answer_logits_are_computed(model, tokenizer, sample):
    ids, pos = sample
    seen = []
    h = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        integrated_gradients(model, ids, pos, rule="gauss_legendre", steps=4, pad_id=tokenizer.pad_token_id, batch_alphas=2)
    finally:
        h.remove()
    # Logits for the positions predicting the answer (plus the last one), never for all L.
    assert seen and all(s[1] == len(pos) + 1 for s in seen)
    assert all(p.grad is None for p in model.parameters())


def test_zero_baseline_and_input_validation(model, tokenizer, sample):
    ids, pos = sample
    res = integrated_gradients(model, ids, pos, rule="gauss_legendre", steps=8, baseline="zero", batch_alphas=8)
    assert np.isfinite(res.token_attr).all() and res.token_attr.shape == (len(ids),)
    with pytest.raises(ValueError, match="last answer token"):
        integrated_gradients(model, torch.cat([ids, ids[:1]]), pos, pad_id=0)


def test_quadrature_rules():
    a, w = quadrature("trapezoid", 5)
    assert np.allclose(a, [0, 0.25, 0.5, 0.75, 1]) and np.allclose(w, [0.125, 0.25, 0.25, 0.25, 0.125])
    a, w = quadrature("linspace", 4)
    assert np.allclose(w, 0.25)
    a, w = quadrature("gauss_legendre", 6)
    assert w.sum() == pytest.approx(1.0) and (a > 0).all() and (a < 1).all()
    assert (w * a**11).sum() == pytest.approx(1 / 12)  # exact for degree 2n - 1
    with pytest.raises(ValueError, match="attribute.rule"):
        quadrature("simpson", 4)


def test_batch_plan_follows_the_token_budget():
    from segsft.method.batching import BatchPlan, plan

    assert plan(1000, 16, 8, 4096) == BatchPlan(4, False)
    assert plan(1000, 16, 2, 4096) == BatchPlan(2, False)
    assert plan(1000, 3, 8, 100000) == BatchPlan(3, False)
    assert plan(5000, 16, 8, 4096) == BatchPlan(1, True)
    assert plan(5000, 16, 8, 0) == BatchPlan(1, False)


def test_checkpointing_gives_the_same_scores(model, tokenizer, sample):
    from segsft.method.batching import attribute_sequence

    ids, pos = sample
    kw = dict(rule="gauss_legendre", steps=6, baseline="pad", pad_id=tokenizer.pad_token_id, batch_alphas=8)
    plain = attribute_sequence(model, ids, pos, max_batch_tokens=0, **kw)
    batched = attribute_sequence(model, ids, pos, max_batch_tokens=3 * len(ids), **kw)
    ckpt = attribute_sequence(model, ids, pos, max_batch_tokens=len(ids) // 2, **kw)
    _close(batched.token_attr, plain.token_attr, 1e-5)
    _close(ckpt.token_attr, plain.token_attr, 1e-5)
    assert not model.training
    assert not getattr(model, "is_activation_checkpointing", getattr(model, "is_gradient_checkpointing", False))
