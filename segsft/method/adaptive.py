"""`attribute.rule=adaptive`: locally adaptive quadrature of the IG path, checked exactly.

DESIGN step 5. Every gradient evaluation at a also gives f(a), and the integral of the
total integrand over [a, b] is exactly f(b) - f(a) (the path is a straight line and
sum_t g_t(a) = df/da). So each subinterval has an exact local error for the total,

    e_i = | (b - a)/2 * (T(a) + T(b)) - (f(b) - f(a)) |,   T = sum_t g_t,

and the quadrature is refined where that error is largest, as globally adaptive
quadrature does (QUADPACK's QAG): the rule on every subinterval is the trapezoid on its
two endpoints, and refining bisects the worst subintervals, so every point is reused and
no point is evaluated twice. Several subintervals are bisected per round so that a GPU
gets several points per pass.

The math only: `evaluate(alphas) -> (f [K], g [K, L])` is supplied by the caller (one
forward/backward pass per call), and so is the stop test, which sees the history of
estimates. Everything here is float64 numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from segsft.config_schema import AttributeConf, with_defaults

_A = AttributeConf()  # the defaults (chosen by bench/convergence_study.py)

Evaluate = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

#: Subintervals narrower than this are never bisected again (a discontinuity, or the
#: rounding noise of a bf16 model, would otherwise attract every new point).
MIN_WIDTH = 2.0**-20


def trapezoid_weights(nodes: np.ndarray) -> np.ndarray:
    """Weights of the composite trapezoid rule on sorted `nodes` covering [0, 1]."""
    h = np.diff(nodes)
    w = np.zeros(len(nodes))
    w[:-1] += h / 2
    w[1:] += h / 2
    return w


@dataclass(frozen=True)
class Estimate:
    """The quadrature after one round."""

    steps: int  # gradient evaluations so far
    token_attr: np.ndarray  # float64 [L]
    gap: float  # |sum a - (f(1) - f(0))| / |f(1) - f(0)|: the completeness gap
    error_sum: float  # sum of |local errors| / |f(1) - f(0)|: a bound on the gap


@dataclass
class AdaptivePath:
    """The nodes, f and per-token integrand of a refined path, and every round's estimate."""

    alphas: np.ndarray  # float64 [K], sorted, 0 and 1 included
    logprobs: np.ndarray  # float64 [K], f at each node
    token_grads: np.ndarray  # float64 [K, L]
    history: list[Estimate] = field(default_factory=list)
    converged: bool = False

    @property
    def final(self) -> Estimate:
        return self.history[-1]

    def local_errors(self) -> np.ndarray:
        return local_errors(self.alphas, self.logprobs, self.token_grads.sum(axis=1))


def local_errors(alphas: np.ndarray, f: np.ndarray, total: np.ndarray) -> np.ndarray:
    h = np.diff(alphas)
    return np.abs(h / 2 * (total[:-1] + total[1:]) - np.diff(f))


def _estimate(alphas: np.ndarray, f: np.ndarray, g: np.ndarray) -> Estimate:
    a = trapezoid_weights(alphas) @ g
    delta = f[-1] - f[0]
    err = local_errors(alphas, f, g.sum(axis=1))
    if abs(delta) <= 1e-12:  # no relative gap exists (IGResult reports None): never converged by the gap
        return Estimate(len(alphas), a, float("inf"), float("inf"))
    return Estimate(len(alphas), a, abs(float(a.sum()) - delta) / abs(delta), float(err.sum()) / abs(delta))


def refine(
    evaluate: Evaluate,
    *,
    init_points: int = 9,
    max_steps: int = 256,
    per_round: int = 1,
    stop: Callable[[Sequence[Estimate]], bool] | None = None,
) -> AdaptivePath:
    """Start from `init_points` uniform nodes (0 and 1 included), then bisect the
    `per_round` subintervals of largest exact local error until `stop(history)` says so
    (-> converged) or `max_steps` gradient evaluations are spent."""
    if init_points < 2:
        raise ValueError(f"init_points={init_points}: need at least the two ends of the path")
    if max_steps < init_points:
        raise ValueError(f"max_steps={max_steps} is below the {init_points} starting points")
    alphas = np.linspace(0.0, 1.0, init_points)
    f, g = evaluate(alphas)
    f, g = np.asarray(f, dtype=np.float64), np.asarray(g, dtype=np.float64)
    path = AdaptivePath(alphas, f, g)
    while True:
        path.history.append(_estimate(path.alphas, path.logprobs, path.token_grads))
        if stop is not None and stop(path.history):
            path.converged = True
            return path
        err = path.local_errors()
        err[np.diff(path.alphas) < MIN_WIDTH] = -1.0
        budget = min(per_round, max_steps - len(path.alphas), int((err >= 0).sum()))
        if budget <= 0:
            return path
        worst = np.sort(np.argsort(-err, kind="stable")[:budget])
        mids = (path.alphas[worst] + path.alphas[worst + 1]) / 2
        fm, gm = evaluate(mids)
        order = np.argsort(np.concatenate([path.alphas, mids]), kind="stable")
        path.alphas = np.concatenate([path.alphas, mids])[order]
        path.logprobs = np.concatenate([path.logprobs, np.asarray(fm, dtype=np.float64)])[order]
        path.token_grads = np.concatenate([path.token_grads, np.asarray(gm, dtype=np.float64)])[order]


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 0, ties sharing their mean rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(len(x), dtype=np.float64)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """The one rank correlation of the package (average ranks for ties); None where it is
    undefined: fewer than two items or a constant side (each caller says what that means)."""
    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


#: token_attr [L] -> (train decision per segment, strength per segment)
Decide = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class StopTest:
    """Stop when the completeness gap is <= `target_gap` and, against the estimate made
    with at most half as many gradient evaluations, the share of unchanged train decisions
    and the rank correlation of segment strengths are both >= `target_stability`.

    `decide` is the select stage's rule applied to an estimate. Decisions are memoised by
    step count, so replaying a history (the study does) costs nothing twice.
    """

    def __init__(self, target_gap: float, target_stability: float, decide: Decide, ranks: bool = False):
        self.target_gap, self.target_stability, self.ranks = target_gap, target_stability, ranks
        self._decide = decide
        self._memo: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def decisions(self, e: Estimate) -> tuple[np.ndarray, np.ndarray]:
        if e.steps not in self._memo:
            self._memo[e.steps] = self._decide(e.token_attr)
        return self._memo[e.steps]

    def stability(self, history: Sequence[Estimate]) -> tuple[float | None, float | None]:
        """(share of decisions unchanged, strength rank correlation) at the last doubling;
        (None, None) before the first one."""
        now = history[-1]
        half = [e for e in history if 2 * e.steps <= now.steps]
        if not half:
            return None, None
        (t_now, s_now), (t_half, s_half) = self.decisions(now), self.decisions(half[-1])
        share = float((t_now == t_half).mean()) if len(t_now) else 1.0
        rho = spearman(s_now, s_half)
        if rho is None:  # too few segments or a constant side: stable only when the order is the same
            rho = 1.0 if np.array_equal(ranks(s_now), ranks(s_half)) else 0.0
        return share, rho

    def __call__(self, history: Sequence[Estimate]) -> bool:
        if history[-1].gap > self.target_gap:
            return False
        share, rho = self.stability(history)
        if share is None:
            return False
        return share >= self.target_stability and (not self.ranks or rho >= self.target_stability)


@dataclass(frozen=True)
class AdaptiveSettings:
    """`attribute.*` keys of the adaptive rule (defaults: bench/results/convergence_study_gpu_fp32.json)."""

    target_gap: float = _A.target_gap
    target_stability: float = _A.target_stability
    max_steps: int = _A.max_steps
    init_points: int = _A.init_points
    # Also require the strength ranks to be stable (costs about 1.6x the evaluations).
    stable_ranks: bool = _A.stable_ranks
    # Subintervals bisected per round; None = the points per pass (1 on CPU). Fix it to get
    # the same nodes on every machine (and after an out-of-memory retry).
    per_round: int | None = _A.per_round

    @classmethod
    def from_cfg(cls, a: Mapping[str, Any]) -> "AdaptiveSettings":
        """From the `attribute` node (schema defaults for the keys a hand-made mapping lacks)."""
        a = with_defaults(AttributeConf, a)
        return cls(target_gap=float(a["target_gap"]), target_stability=float(a["target_stability"]),
                   max_steps=int(a["max_steps"]), init_points=int(a["init_points"]),
                   stable_ranks=bool(a["stable_ranks"]),
                   per_round=None if a["per_round"] is None else int(a["per_round"]))
