"""Quadrature rules for the integral over alpha in [0, 1] (docs/method.md step 5), in float64."""

from __future__ import annotations

import numpy as np

#: Fixed rules: nodes and weights known up front.
FIXED_RULES = ("linspace", "trapezoid", "gauss_legendre", "gradient_x_input")
#: adaptive: nodes chosen while integrating (segsft.method.adaptive).
RULES = ("adaptive", *FIXED_RULES)


def quadrature(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (float64) of `rule` with `steps` points on [0, 1]."""
    if rule not in FIXED_RULES:
        raise ValueError(f"attribute.rule={rule!r} is not a fixed rule: use one of {list(FIXED_RULES)}")
    if rule == "gradient_x_input":
        # Not IG: the single node a = 1 with weight 1 (a cheap baseline).
        return np.ones(1), np.ones(1)
    if steps < 1 or (rule == "trapezoid" and steps < 2):
        raise ValueError(f"attribute.steps={steps} is too small for rule {rule!r} (need >= {2 if rule == 'trapezoid' else 1})")
    if rule == "gauss_legendre":
        x, w = np.polynomial.legendre.leggauss(steps)
        return (x + 1.0) / 2.0, w / 2.0
    alphas = np.linspace(0.0, 1.0, steps)
    if rule == "linspace":
        # The reference's rule: every point weighted 1/n (a biased Riemann sum).
        return alphas, np.full(steps, 1.0 / steps)
    w = np.full(steps, 1.0 / (steps - 1))
    w[0] = w[-1] = 0.5 / (steps - 1)
    return alphas, w
