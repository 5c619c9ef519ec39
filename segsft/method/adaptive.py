"""`attribute.rule=adaptive`: locally adaptive quadrature of the IG path, checked exactly.

docs/method.md step 5. Every gradient evaluation at a also gives f(a), and the integral of the
total integrand over [a, b] is exactly f(b) - f(a) (the path is a straight line and
sum_t g_t(a) = df/da). So each subinterval has an exact local error for the total,

    e_i = | (b - a)/2 * (T(a) + T(b)) - (f(b) - f(a)) |,   T = sum_t g_t,

and the quadrature is refined where that error is largest, as globally adaptive
quadrature does (QUADPACK's QAG): the rule on every subinterval is the trapezoid on its
two endpoints, and refining bisects the worst subintervals, so every point is reused and
no point is evaluated twice. Several subintervals are bisected per round so that a GPU
gets several points per pass.

The stop test (`StopTest`) uses the error bound, the sum of the absolute local errors: the
signed completeness gap sums errors of both signs, and on a path that swings by several
times its net change it can be small by cancellation alone (a whole 3,358-token trace showed
a gap of 0.011 with a bound of 0.98). It also gives every decision an error margin
(`Verdict`), and flags the decisions that the remaining error could flip as borderline.

The math only: `evaluate(alphas) -> (f [K], g [K, L])` is supplied by the caller (one
forward/backward pass per call), and so is the stop test, which sees the history of
estimates. Everything here is float64 numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from segsft.config_schema import ADAPTIVE_KEYS, AttributeConf


Evaluate = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

#: Where the points go once the error bound is met (`attribute.refine_on`, `StopTest.focus`).
REFINE_ON = ("total", "decisions")
#: How a segment's decision is moved within its errors to call it borderline (`attribute.margin`).
MARGINS = ("adversarial", "own")

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
    gap: float  # |sum a - (f(1) - f(0))| / |f(1) - f(0)|: the completeness gap (signed errors may cancel in it)
    error_sum: float  # sum of |local errors| / |f(1) - f(0)|: the error bound (>= gap; the stop test uses it)


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
    max_steps: int,
    per_round: int = 1,
    stop: Callable[[Sequence[Estimate]], bool] | None = None,
    focus: Callable[["AdaptivePath"], np.ndarray | None] | None = None,
) -> AdaptivePath:
    """Start from `init_points` uniform nodes (0 and 1 included), then bisect the
    `per_round` subintervals of largest exact local error until `stop(history)` says so
    (-> converged) or `max_steps` gradient evaluations are spent. `focus(path)`, when it
    returns an array, replaces the local errors as the subintervals' priority for that round
    (`StopTest.focus`: where the flagged decisions' error is). `max_steps` has no default here:
    the one default is `attribute.max_steps` in config_schema."""
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
        prio = focus(path) if focus is not None else None
        err = path.local_errors() if prio is None else np.asarray(prio, dtype=np.float64).copy()
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


@dataclass(frozen=True)
class Verdict:
    """The decisions of the last estimate with their error margins (docs: the method, error margins).

    - strength_err: the largest change of the segment's share of the strengths over the last
      doubling of the evaluations (every estimate since the one with half as many points), in
      units of strength: the quadrature error the estimate may still carry where the rule can
      see it. A maximum, not the change between two estimates, so a decision that flipped and
      flipped back in between is still seen.
    - borderline: the decision differs somewhere within the errors (`attribute.margin`; by
      default the worst case over every strength within +-its err, rank swaps included, and
      the segment's consistency within +-its change over the doubling: `flips_within`). Such
      a decision is not settled by the quadrature; it is reported as it is and flagged.
    - settled: the decision is the same in every estimate of the last doubling.
    - consistency_err: the largest change of the segment's consistency over that doubling (the
      consistency half of the margin).
    """

    steps: int
    train: np.ndarray  # bool [n]
    strength: np.ndarray  # [n]
    strength_err: np.ndarray  # [n]
    borderline: np.ndarray  # bool [n]
    settled: np.ndarray  # bool [n]
    rank_stability: float  # Spearman of the strengths against the half-budget estimate
    consistency_err: np.ndarray | None = None  # [n]

    @property
    def decision_stability(self) -> float:
        """Share of the decisions that are not borderline and settled (1.0 without segments)."""
        return float((self.settled & ~self.borderline).mean()) if len(self.train) else 1.0


def allowed_borderline(max_borderline: float, n_segments: int) -> int:
    """How many borderline segments a converged sample may have: a share of its segments, rounded down."""
    return int(math.floor(max_borderline * n_segments + 1e-9))


def _consistency_moves(rule: Any, c: np.ndarray, c_err: np.ndarray) -> list[np.ndarray]:
    """The consistencies each segment can reach within +-c_err that matter to the rule: both ends,
    and a bound of select's [min_consistency, max_consistency] where it lies in between (a segment
    outside both bounds whose end moves overshoot the interval can still land inside it)."""
    moves = [np.clip(c - c_err, 0.0, 1.0), np.clip(c + c_err, 0.0, 1.0)]
    cfg = getattr(rule, "select_cfg", None)
    for bound in (getattr(cfg, "min_consistency", None), getattr(cfg, "max_consistency", None)):
        if bound is not None:
            moves.append(np.where(np.abs(c - bound) <= c_err, float(bound), c))
    return moves


def flips_within(rule: Any, train: np.ndarray, s: np.ndarray, c: np.ndarray, err_rows: np.ndarray,
                 c_err: np.ndarray) -> np.ndarray:
    """The margins: True where segment k's decision differs somewhere in the box where every
    strength j lies in s_j +- err_rows[k, j] and k's consistency in c_k +- c_err[k] (the worst
    case over the box, rank swaps included; one query of the rule for all its variants).

    The rule (docs/method.md step 7) keeps k in the top-mass prefix while the mass ranked before
    it is < top_mass of the total, so two variants per k are the extremes: *out*, k at its lowest,
    every segment that can rank above it (strength desc, index asc) at its highest and the others
    at their lowest (the mass before k is largest and the rest smallest); *in*, k at its highest,
    every segment that can rank below it as high as it can while staying below and the others at
    their lowest. Each is combined with every consistency move of `_consistency_moves`. A row
    with only the diagonal (attribute.margin=own) moves k alone. Exact up to rounding: where the
    share before k equals top_mass exactly, a point of the box whose float sums round the other
    way can flip k unflagged."""
    n = len(train)
    idx = np.arange(n)
    eye = np.eye(n, dtype=bool)
    lo = np.clip(s[None, :] - err_rows, 0.0, None)  # [k, j]: j's range in k's variants
    hi = s[None, :] + err_rows
    k_lo, k_hi = lo[idx, idx][:, None], hi[idx, idx][:, None]
    first = idx[None, :] < idx[:, None]  # j ranks before k at equal strength
    above = (hi > k_lo) | ((hi == k_lo) & first)
    out = np.where(eye, k_lo, np.where(above, hi, lo))
    below = (lo < k_hi) | ((lo == k_hi) & ~first)
    cap = np.where(first, np.nextafter(k_hi, -np.inf), k_hi)  # the highest a j can be and stay below k
    into = np.where(eye, k_hi, np.where(below, np.maximum(np.minimum(hi, cap), lo), lo))
    moves = _consistency_moves(rule, c, c_err)
    variants_s = np.concatenate([v for v in (out, into) for _ in moves])
    variants_c = np.concatenate([np.where(eye, m[None, :], c[None, :]) for _ in (out, into) for m in moves])
    flips = rule.decide(variants_s, variants_c) != train[None, :]
    return flips.reshape(-1, n, n)[:, idx, idx].any(axis=0)


def strength_shares(strength: np.ndarray) -> np.ndarray:
    """Each segment's share of the strengths summed (all 0 where they sum to 0)."""
    total = float(strength.sum())
    return strength / total if total > 0 else np.zeros_like(strength)


class StopTest:
    """Converged when, at once:
    1. the error bound (the sum of the absolute exact local errors over |f(1) - f(0)|, which
       cannot cancel as the signed gap can) is <= `target_gap`;
    2. of the segments not borderline, a share >= `target_stability` kept its decision over
       the whole last doubling of the evaluations (and, with `ranks`, the strength ranks
       correlate >= target_stability with the half-budget estimate);
    3. at most `allowed_borderline(max_borderline, n)` segments are borderline.

    `rule` is the select stage's rule on the sample (`segsft.method.metrics.SegmentRule`).
    Metrics and decisions are memoised by step count, so replaying a history (the study
    does) costs nothing twice.
    """

    def __init__(self, target_gap: float, target_stability: float, rule: Any, ranks: bool = False,
                 max_borderline: float = 0.0, refine_on: str = "total", margin: str = "adversarial"):
        self.target_gap, self.target_stability, self.ranks = target_gap, target_stability, ranks
        self.max_borderline, self.refine_on, self.margin = max_borderline, refine_on, margin
        self.rule = rule
        self._memo: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._verdicts: dict[int, Verdict | None] = {}

    def decisions(self, e: Estimate) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(train, strength, consistency) of one estimate."""
        if e.steps not in self._memo:
            strength, consistency = self.rule.metrics(e.token_attr)
            train = self.rule.decide(strength[None, :], consistency[None, :])[0]
            self._memo[e.steps] = (train, strength, consistency)
        return self._memo[e.steps]

    def verdict(self, history: Sequence[Estimate]) -> Verdict | None:
        """The last estimate's decisions with their margins; None before the first doubling."""
        now = history[-1]
        if now.steps in self._verdicts:
            return self._verdicts[now.steps]
        half = [e for e in history if 2 * e.steps <= now.steps]
        if not half:
            return None
        window = [half[-1]] + [e for e in history if e.steps > half[-1].steps]
        train, strength, consistency = self.decisions(now)
        n = len(train)
        c_err = np.zeros(n)
        settled = np.ones(n, dtype=bool)
        for e in window[:-1]:
            settled &= self.decisions(e)[0] == train
        earlier = [self.decisions(e) for e in self.error_window(window)[:-1]]
        err = self.strength_errors(strength, [s_e for _, s_e, _ in earlier])
        for _, _, c_e in earlier:
            c_err = np.maximum(c_err, np.nan_to_num(np.abs(c_e - consistency), nan=0.0))
        s_half = self.decisions(half[-1])[1]
        rho = spearman(strength, s_half)
        if rho is None:  # too few segments or a constant side: stable only when the order is the same
            rho = 1.0 if np.array_equal(ranks(strength), ranks(s_half)) else 0.0
        v = Verdict(now.steps, train, strength, err, self._borderline(train, strength, consistency, err, c_err),
                    settled, rho, c_err)
        self._verdicts[now.steps] = v
        return v

    def _borderline(self, train: np.ndarray, s: np.ndarray, c: np.ndarray, err: np.ndarray,
                    c_err: np.ndarray) -> np.ndarray:
        """Per segment: does the rule's decision flip within the errors? `adversarial` (default):
        the worst case over every strength within +-err at once, rank swaps included, and its
        consistency within +-c_err. `own`: its own strength and consistency only, the others as
        they are (on the study's 16 cut traces, capped at 256 with refine_on=total, 69.5 evaluations
        and 1% flagged, against 184 and 9% for adversarial, but one trace called converged with a decision that a 1,025-point
        reference makes otherwise; docs/convergence.md, "Error margins, measured")."""
        n = len(train)
        if n == 0:
            return np.zeros(0, dtype=bool)
        # own: the others move by 0, so only the diagonal (the segment's own error) is left.
        return flips_within(self.rule, train, s, c, np.tile(err, (n, 1)) if self.margin == "adversarial"
                            else np.diag(err), c_err)

    def strength_errors(self, strength: np.ndarray, earlier: Sequence[np.ndarray]) -> np.ndarray:
        """Per segment, the largest change of its share of the strengths summed between an earlier
        estimate of the window and the last, in units of strength (times the last sum). The rule
        sees strengths only through those shares (the top-mass prefix is a share of the total), so a
        change common to all of them (the L2 norm that scales them) is no error of any decision.
        On the study's 16 cut traces the same segments are flagged either way, at a median of 184
        evaluations instead of 205 (docs/convergence.md, "Error margins, measured")."""
        # A non-finite strength counts as 0, as the rule counts it.
        finite = lambda x: np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)  # noqa: E731
        strength, earlier = finite(strength), [finite(s_e) for s_e in earlier]
        err = np.zeros(len(strength))
        total = float(strength.sum())
        for s_e in earlier:
            # With no strength at all now there are no shares: the strengths' own changes.
            err = np.maximum(err, np.abs(strength_shares(s_e) - strength_shares(strength)) * total if total > 0
                             else np.abs(s_e - strength))
        return err

    def error_window(self, window: Sequence[Estimate]) -> Sequence[Estimate]:
        """The estimates the errors are the largest change over: the whole last doubling (the
        study compared it with its two ends only, whose errors covered the reference's strengths
        on 70-73% of the segments instead of 90-92%; docs/convergence.md, "Error margins, measured")."""
        return window

    def focus(self, path: AdaptivePath) -> np.ndarray | None:
        """With `refine_on="decisions"`: once the bound is met, the priority of each subinterval
        for the segments whose decision is flagged (borderline or not settled), so the next
        points go where their error is rather than where the total's is. Per flagged segment,
        h * sum over its tokens of |g_t(b) - g_t(a)| (what bounds a trapezoid's error on a
        monotone piece), as a share of that segment's sum, summed over the flagged segments.
        None (the total's local errors) while the bound is not met or nothing is flagged."""
        if self.refine_on != "decisions" or path.final.error_sum > self.target_gap:
            return None
        v = self.verdict(path.history)  # memoised: the stop test has just computed it
        if v is None:
            return None
        flagged = np.flatnonzero(v.borderline | ~v.settled)
        if not len(flagged):
            return None
        h = np.diff(path.alphas)
        prio = np.zeros(len(h))
        for k in flagged:
            lo, hi = self.rule.segment_tokens[k]
            d = h * np.abs(np.diff(path.token_grads[:, lo:hi], axis=0)).sum(axis=1)
            if d.sum() > 0:
                prio += d / d.sum()
        return prio if prio.any() else None

    def stability(self, history: Sequence[Estimate]) -> tuple[float | None, float | None]:
        """(share of decisions not borderline and settled, strength rank correlation at the last
        doubling); (None, None) before the first one."""
        v = self.verdict(history)
        return (None, None) if v is None else (v.decision_stability, v.rank_stability)

    def __call__(self, history: Sequence[Estimate]) -> bool:
        if history[-1].error_sum > self.target_gap:
            return False
        v = self.verdict(history)
        if v is None:
            return False
        firm = ~v.borderline
        share = float(v.settled[firm].mean()) if firm.any() else 1.0
        return (share >= self.target_stability and int(v.borderline.sum()) <= allowed_borderline(self.max_borderline, len(v.train))
                and (not self.ranks or v.rank_stability >= self.target_stability))


class _AdaptiveMethods:
    @classmethod
    def from_cfg(cls, a: AttributeConf) -> "AdaptiveSettings":
        """The adaptive rule's keys of the typed `attribute` settings."""
        return cls(**{k: getattr(a, k) for k in ADAPTIVE_KEYS})

    def stop_test(self, rule: Any) -> StopTest:
        return StopTest(self.target_gap, self.target_stability, rule, ranks=self.stable_ranks,
                        max_borderline=self.max_borderline, refine_on=self.refine_on, margin=self.margin)


#: `attribute.*` keys of the adaptive rule (config_schema.ADAPTIVE_KEYS), with AttributeConf's
#: types and defaults: derived from the schema, not declared again.
AdaptiveSettings = make_dataclass(
    "AdaptiveSettings",
    [(f.name, f.type, field(default=f.default)) for f in fields(AttributeConf) if f.name in ADAPTIVE_KEYS],
    bases=(_AdaptiveMethods,), frozen=True, namespace={"__module__": __name__})
