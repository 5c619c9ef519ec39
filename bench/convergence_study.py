"""Convergence of IG on real weights: which quadrature gives scores that do not depend on the nodes.

    python bench/convergence_study.py compute            # resumable; caches every point it computes
    python bench/convergence_study.py analyze            # tables + bench/results/convergence_study.json
    # your model on a GPU, in one command (about 20 s per trace and baseline on an H200):
    python bench/convergence_study.py all --device cuda --model <hub id or dir> --tag mine \
        --baselines pad --levels 10 --adaptive-max 512 --per-round 4 --batch 64 --out mine.json

Traces: the shared real traces (R1-Distill-Qwen-7B on AIME24), each cut at segment
boundaries on both sides to 200-400 SmolLM2 tokens (bench/traces.window_rows: one
contiguous run of whole segments, never stitched excerpts). Model: SmolLM2-135M-Instruct.

`compute` evaluates, per (trace, baseline), the points every candidate needs and appends
them to a cache (one .npz per trace and baseline, written atomically after every batch),
so a killed run resumes where it stopped and no point is ever computed twice:
- nested uniform grids of 2^k + 1 points (k = 2 .. --levels), f and the per-token integrand;
- today's rules: linspace 20 and 50 (the paper's), Gauss-Legendre 16, 32 and 64;
- the adaptive rule (segsft.method.adaptive.refine) run to --adaptive-max points.
`analyze` replays every candidate from the cache (the adaptive rule with its real stop
test, the select stage's own rule deciding) and compares it with the reference, the
densest uniform grid cached (independent of the rule under test), and with a run of the
same rule at a 4x tighter target. Per candidate: cost, mean and worst-trace agreement,
traces called converged that agree < 95%, borderline segments and the agreement of the
others. `--whole` takes the whole traces (no cut), shortest first; keep its `--tag` apart.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from segsft.config_schema import AttributeConf, ModelConf  # noqa: E402

from segsft.method.adaptive import (AdaptivePath, StopTest, Verdict, flips_within, local_errors, refine,  # noqa: E402
                                      spearman, trapezoid_weights)
from segsft.method.quadrature import quadrature  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
FIXED = [("linspace", 20), ("linspace", 50), ("gauss_legendre", 16), ("gauss_legendre", 32), ("gauss_legendre", 64)]
# Inside the repository and committed: a home directory does not outlive a session here, and
# a lost cache once cost a whole session of CPU. Every .npz holds one (trace, baseline, tag).
CACHE = Path(os.environ.get("SEGSFT_STUDY_CACHE", REPO / "bench" / "cache" / "convergence"))


class PointCache:
    """f and g at every alpha ever computed for one (trace, baseline, dtype): computes only
    the alphas it lacks, in one call, and saves after each call (atomic rename)."""

    def __init__(self, file: Path, path_fn=None, store: str = "float32", save_every: int = 4):
        self.file, self.path_fn, self.store, self.save_every = file, path_fn, store, save_every
        self.points: dict[float, tuple[float, np.ndarray]] = {}
        # Wall seconds and points of the evaluations timed on this cache's machine (caches
        # written before the timing have none): the study's cost per evaluation.
        self.seconds, self.timed = 0.0, 0
        if file.exists():
            z = np.load(file)
            for a, f, g in zip(z["alphas"], z["f"], z["g"]):
                self.points[float(a)] = (float(f), g.astype(np.float64))
            if "seconds" in z.files:
                self.seconds, self.timed = float(z["seconds"]), int(z["timed"])
        self._saved = (self.seconds, self.timed)  # the timing the file holds, as this process last saw it
        self.computed = 0

    def __call__(self, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alphas = np.asarray(alphas, dtype=np.float64)
        missing = sorted({float(a) for a in alphas} - set(self.points))
        if missing and self.path_fn is None:
            raise KeyError(f"{len(missing)} points not in {self.file} (run `compute` first)")
        # A few points at a time, each batch saved: a whole trace costs half a minute per point
        # on a CPU core, and a killed grid of 30 points must not lose them all.
        for i in range(0, len(missing), self.save_every):
            part = missing[i:i + self.save_every]
            t0 = time.perf_counter()
            f, g = self.path_fn(np.array(part))
            self.seconds += time.perf_counter() - t0
            self.timed += len(part)
            for a, fa, ga in zip(part, f, g):
                self.points[a] = (float(fa), np.asarray(ga, dtype=np.float64))
            self.computed += len(part)
            self.save()
        return (np.array([self.points[float(a)][0] for a in alphas]),
                np.stack([self.points[float(a)][1] for a in alphas]))

    def save(self) -> None:
        # Two lanes may widen the same trace: each merges what the other saved since, under a
        # lock, so neither overwrites the other's points (their seconds add up the same way).
        from filelock import FileLock

        self.file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.file) + ".lock"):
            if self.file.exists():
                z = np.load(self.file)
                for x, f, g in zip(z["alphas"], z["f"], z["g"]):
                    self.points.setdefault(float(x), (float(f), g.astype(np.float64)))
                if "seconds" in z.files:
                    saved_s, saved_n = float(z["seconds"]), int(z["timed"])
                    # What this process timed since its last save, on top of what is on disk.
                    self.seconds, self.timed = (saved_s + self.seconds - self._saved[0],
                                                saved_n + self.timed - self._saved[1])
            a = np.array(sorted(self.points))
            tmp = self.file.with_suffix(".tmp.npz")
            np.savez(tmp, alphas=a, f=np.array([self.points[x][0] for x in a]),
                     g=np.stack([self.points[x][1] for x in a]).astype(self.store),
                     seconds=np.float64(self.seconds), timed=np.int64(self.timed))
            os.replace(tmp, self.file)
            self._saved = (self.seconds, self.timed)

    def sorted_f(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.array(sorted(self.points))
        return a, np.array([self.points[x][0] for x in a])


def traces(n: int, model: str = MODEL, whole: bool = False, max_tokens: int = 0,
           min_tokens: int = 0) -> list[tuple[dict, object]]:
    """The cut traces (the first `n` windows by id) or, with `whole`, the whole traces, no
    cut, shortest first, those of more than `min_tokens` and at most `max_tokens` tokens
    (0 = no bound), the first `n`."""
    from traces import load_rows, window_rows

    from segsft.run.models import load_tokenizer
    from segsft.method.text import build_sequence, resolve_pattern

    tok = load_tokenizer(ModelConf(name_or_path=model))
    rx = resolve_pattern("default")
    rows = sorted(load_rows(), key=lambda r: r["id"])
    if not whole:
        rows = window_rows(tok, rows, rx)[:n]
        return [(r, build_sequence(tok, r["question"], r["solution"], rx, r["answer"])) for r in rows]
    items = [(r, build_sequence(tok, r["question"], r["solution"], rx, r["answer"])) for r in rows]
    items = sorted(items, key=lambda it: len(it[1].input_ids))
    return [it for it in items if (not max_tokens or len(it[1].input_ids) <= max_tokens)
            and len(it[1].input_ids) > min_tokens][:n]


def cache_file(cache: Path, tag: str, trace_id: str, baseline: str) -> Path:
    return cache / tag / f"{trace_id}--{baseline}.npz"


def compute(args: argparse.Namespace) -> None:
    import torch

    from segsft.method.ig import IGPath, freeze
    from segsft.method.metrics import SegmentRule
    from segsft.method.selection_config import SelectConfig
    from segsft.run.models import DTYPES, load_model, load_tokenizer, pad_token_id

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = ModelConf(name_or_path=args.model)
    tok = load_tokenizer(cfg)
    model = freeze(load_model(cfg, device, DTYPES[args.dtype]).eval())
    pad = pad_token_id(tok)
    started = time.time()
    items = traces(args.traces, args.model, args.whole, args.max_tokens, args.min_tokens)
    if args.ids:  # some traces first (e.g. those whose references disagree), in the order given
        order = args.ids.split(",")
        items = sorted([it for it in items if it[0]["id"] in order], key=lambda it: order.index(it[0]["id"]))
    print(f"{len(items)} traces: " + ", ".join(f"{r['id']}({len(s.input_ids)} tok, {len(s.segment_tokens)} seg)"
                                                for r, s in items), flush=True)
    for baseline in args.baselines.split(","):
        levels = args.levels if baseline == "pad" else args.other_levels
        for row, seq in items:
            if args.budget and time.time() - started > args.budget:
                print("time budget reached; rerun to resume", flush=True)
                return
            n = int(seq.answer_positions[-1]) + 1
            ig = IGPath(model, torch.as_tensor(seq.input_ids[:n], device=device),
                        torch.as_tensor(seq.answer_positions, device=device), baseline=baseline, pad_id=pad,
                        trace_tokens=seq.trace_tokens, batch_alphas=args.batch)
            cache = PointCache(cache_file(args.cache, args.tag, row["id"], baseline), ig, args.store,
                               save_every=max(4, args.batch))  # a GPU pass keeps its full batch
            t0 = time.time()
            # The rule's own points first: when the budget runs out mid-trace, what is cached
            # already replays the adaptive rule; the grids come next (they share the dyadic nodes).
            refine(cache, max_steps=args.adaptive_max, per_round=args.per_round)
            for k in range(2, levels + 1):
                if args.budget and time.time() - started > args.budget:
                    break
                cache(np.linspace(0.0, 1.0, 2**k + 1))
            if baseline == "pad" and not args.no_fixed:
                for rule, steps in FIXED:
                    cache(quadrature(rule, steps)[0])
            if baseline == "pad" and not args.no_focus:
                # attribute.refine_on=decisions at the default targets and 4x tighter: its points
                # leave the dyadic grids where the flagged segments' integrand changes.
                seg_rule = SegmentRule(seq.segment_tokens, SelectConfig(), seq.train_tokens)
                cap = args.focus_max or args.adaptive_max
                st, tight = (StopTest(g, 1.0, seg_rule, max_borderline=DEFAULT_MAX_BORDERLINE, refine_on="decisions")
                             for g in (DEFAULT_GAP, DEFAULT_GAP / 4))
                default = refine(cache, max_steps=cap, per_round=args.per_round, stop=st, focus=st.focus)
                if args.focus_tight == "all":
                    refine(cache, max_steps=cap, per_round=args.per_round, stop=tight, focus=tight.focus)
                elif args.focus_tight == "converged" and default.converged:
                    # The stricter check's run (AtLeast: 4x tighter and twice the evaluations, to the
                    # cap); its points include those of the plain 4x tighter run.
                    refine(cache, max_steps=cap, per_round=args.per_round,
                           stop=AtLeast(tight, 2 * default.final.steps), focus=tight.focus)
            print(f"{args.tag} {baseline:9s} {row['id']}: {len(cache.points)} points cached, {cache.computed} new "
                  f"in {time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------- analysis


class Replay:
    """Re-run the adaptive rule from a cache. The integrand is stored rounded (float16 for
    a GPU transfer), so a replay can pick a subinterval the original run did not and need a
    point that was never computed: the replay then ends at the last complete round."""

    def __init__(self, cache: PointCache, max_steps: int, per_round: int):
        self.cache, self.per_round = cache, per_round
        self.max_steps = max_steps
        steps = [0]

        def probe(alphas):
            out = cache(alphas)
            steps[0] += len(alphas)
            return out

        try:
            refine(probe, max_steps=max_steps, per_round=per_round)
        except KeyError:
            self.max_steps = steps[0]

    def __call__(self, stop=None, max_steps: int | None = None, focus: bool = False) -> AdaptivePath | None:
        """The rule replayed with `stop` (capped at `max_steps`); with `focus`, its points go where
        `stop.focus` says (attribute.refine_on=decisions): None when those points are not cached."""
        # Focused points may reach past the rule's own (compute --focus-max).
        cap = self.max_steps if max_steps is None else max_steps if focus else min(max_steps, self.max_steps)
        # The rule's own points may reach past a power of two (the grids share its nodes), while
        # `compute` ran the focused ones to a power of two (--adaptive-max or --focus-max): fall
        # back to those, down to the one below the rule's own.
        floor = 1 << (self.max_steps.bit_length() - 1)
        caps = [cap] + [1 << k for k in range(cap.bit_length() - 1, floor.bit_length() - 2, -1)]
        for c in dict.fromkeys(c for c in caps if c <= cap):
            try:
                return refine(self.cache, max_steps=c, per_round=self.per_round, stop=stop,
                              focus=stop.focus if focus else None)
            except KeyError:
                continue
        return None


def estimate_of(cache: PointCache, alphas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weights @ cache(alphas)[1]


class LegacyStop:
    """The stop test before the bound (for the frontier only): the signed gap <= target and
    the decisions equal to those of the estimate with half the evaluations (a single pair)."""

    def __init__(self, target_gap: float, target_stability: float, rule):
        self.target_gap, self.target_stability, self.rule = target_gap, target_stability, rule

    def __call__(self, history) -> bool:
        now = history[-1]
        half = [e for e in history if 2 * e.steps <= now.steps]
        if now.gap > self.target_gap or not half:
            return False
        return float((self.rule(now.token_attr)[0] == self.rule(half[-1].token_attr)[0]).mean()) >= self.target_stability


#: The candidates of the stop test: (target_gap on the bound, max_borderline); stability 1.0.
BOUNDS = [2.0, 1.0, 0.5, 0.25, 0.1, 0.05]
MAX_BORDERLINE = [0.0, 0.2]
LEGACY = [(0.05, 0.95), (0.025, 0.95)]
#: The defaults (segsft.config_schema.AttributeConf) and what was compared with them, each at
#: the default targets: the error margins (which estimates the strength error is the largest
#: change over; which segments a margin moves), where the points go (refine_on), and the cost
#: cap (max_steps: how the borderline share falls with the budget).
DEFAULT_GAP, DEFAULT_MAX_BORDERLINE = AttributeConf().target_gap, AttributeConf().max_borderline
MARGINS = [("doubling", "adversarial", "share"), ("doubling", "own", "share"), ("doubling", "adversarial", "raw"),
           ("doubling", "push", "raw"), ("doubling", "own", "raw"), ("pair", "adversarial", "share"),
           ("pair", "own", "share")]
CAPS = [32, 64, 128]
#: Sharper strength errors (`SharperErrors`): fixed factors, and Richardson's from the trace's own rate.
SHARPER = [0.5, 0.25, "richardson"]
#: Budgets beyond the default max_steps, on the traces whose focused points reach them
#: (compute --focus-max).
MORE = [512, 1024]
#: (after, max_steps): the default refined past `after` evaluations only while its flags fall
#: (`stalled_at`; tried for the cap, not adopted: docs/convergence.md, "What a larger budget settles").
STALL = [(128, 1024), (256, 1024)]


def stalled_at(stop: StopTest, history, after: int) -> int | None:
    """Where the run would end if, past `after` evaluations, it went on only while it settled
    flags: the first doubling (after, 2 after, ...) with as many flagged decisions (borderline or
    unsettled), and some, as at the doubling before; None if the flags fall at every one."""
    def flagged(upto: int) -> int | None:
        head = [e for e in history if e.steps <= upto]
        v = stop.verdict(head) if head else None
        return None if v is None else int((v.borderline | ~v.settled).sum())

    mark = after
    while mark <= history[-1].steps:
        now, then = flagged(mark), flagged(mark // 2)
        if now is not None and then is not None and 0 < now >= then:
            return mark
        mark *= 2
    return None


def push_flips(rule, train, s, c, err, c_err):
    """The margin before the worst case over the box (for the frontier only): segment k's own
    strength by +-err and every other's by its err towards the flip (those ranked above k up and
    those below down, or the reverse), or its consistency by +-c_err; no rank swap is tried, so a
    segment just below k that could overtake it is not seen (aime24-025 at 192 evaluations)."""
    n = len(train)
    pos = np.empty(n, dtype=np.int64)
    pos[np.lexsort((np.arange(n), -s))] = np.arange(n)
    above = pos[None, :] < pos[:, None]
    below = pos[None, :] > pos[:, None]
    eye = np.eye(n, dtype=bool)
    rows = np.tile(err, (n, 1))
    push_out = s + rows * above - rows * below - rows * eye
    push_in = s - rows * above + rows * below + rows * eye
    variants_s = np.clip(np.concatenate([push_out, push_in, np.tile(s, (2 * n, 1))]), 0.0, None)
    variants_c = np.concatenate([np.tile(c, (2 * n, 1)), np.where(eye, np.clip(c - c_err, 0.0, 1.0), c),
                                 np.where(eye, np.clip(c + c_err, 0.0, 1.0), c)])
    flips = rule.decide(variants_s, variants_c) != train[None, :]
    return flips.reshape(4, n, n)[:, np.arange(n), np.arange(n)].any(axis=0)


class MarginVariant(StopTest):
    """The stop test with other error margins (the product's default is `doubling` x
    `adversarial` x `share`; `own` is its attribute.margin=own; the rest are the study's only):
    `pair` takes the strength error as the change between the half-budget estimate and the last
    one only (not the largest over the doubling); `raw` takes it on the strengths themselves,
    not on their shares of the sum (a change of scale common to all of them counts as error);
    `push` is the margin before the worst case over the box (`push_flips`)."""

    def __init__(self, *args, window: str = "doubling", margin: str = "adversarial", errors: str = "share", **kw):
        super().__init__(*args, margin="adversarial" if margin == "push" else margin, **kw)
        self.window, self.errors, self.push = window, errors, margin == "push"

    def error_window(self, window):
        return window if self.window == "doubling" else [window[0], window[-1]]

    def strength_errors(self, strength, earlier):
        if self.errors == "share":
            return super().strength_errors(strength, earlier)
        return np.max([np.abs(s_e - strength) for s_e in earlier], axis=0, initial=0.0)

    def _borderline(self, train, s, c, err, c_err):
        return push_flips(self.rule, train, s, c, err, c_err) if self.push else super()._borderline(train, s, c, err, c_err)


class SharperErrors(StopTest):
    """The product's stop test with sharper strength errors (the frontier only): the errors of
    the default margin (and the consistency's) times a fixed `factor`, or, with
    factor="richardson", divided by 2^p - 1. Errors falling as N^-p make the change over a
    doubling (2^p - 1) times the error left after it (Richardson); p is measured on the trace
    as `err_rate` does, kept within [0.5, 2] (2 is the trapezoid's order on a smooth path).
    Whether a sharper estimate than the largest change over a doubling clears the near ties
    honestly: the flags it clears against the firm decisions it gets wrong."""

    P_RANGE = (0.5, 2.0)

    def __init__(self, *args, factor: float | str, **kw):
        super().__init__(*args, **kw)
        self.factor = factor
        self._sharp: dict[int, Verdict] = {}

    def scale(self, history) -> float:
        if self.factor != "richardson":
            return float(self.factor)
        p = err_rate(self, history, verdict=super().verdict)
        return 1.0 if p is None else 1.0 / (2.0 ** float(np.clip(p, *self.P_RANGE)) - 1.0)

    def verdict(self, history):
        v = super().verdict(history)
        if v is None:
            return None
        if v.steps not in self._sharp:
            f = self.scale(history)
            err, c_err = v.strength_err * f, v.consistency_err * f
            c = self.decisions(history[-1])[2]
            self._sharp[v.steps] = replace(v, strength_err=err, consistency_err=c_err,
                                           borderline=self._borderline(v.train, v.strength, c, err, c_err))
        return self._sharp[v.steps]


class AtLeast:
    """`stop`, not before `steps` evaluations: the tighter run of the check "4x tighter target
    *and* at least twice the evaluations". A 4x tighter target alone is blind where the bound
    already meets it (aime24-025 stops at 192 evaluations either way)."""

    def __init__(self, stop: StopTest, steps: int):
        self.stop, self.steps, self.focus, self.verdict = stop, steps, stop.focus, stop.verdict

    def __call__(self, history) -> bool:
        return self.stop(history) and history[-1].steps >= self.steps  # the stop test sees every round


def shrink_to_settle(rule, train: np.ndarray, s: np.ndarray, c: np.ndarray, err: np.ndarray,
                     c_err: np.ndarray, which: np.ndarray) -> list[float]:
    """Per segment in `which`: the largest factor (<= 1) by which the errors `err` / `c_err` may
    be scaled before decision `train` (of strengths `s`, consistencies `c`: the reference's) no
    longer flips within them under the default margin. How far a flagged segment's errors must
    shrink before even the reference settles it: near 0 is a near tie."""
    n = len(train)

    def flips(lam: float) -> np.ndarray:
        return flips_within(rule, train, s, c, np.tile(lam * err, (n, 1)), lam * c_err)

    out = []
    for k in np.flatnonzero(which):
        lo, hi = 0.0, 1.0
        if not flips(hi)[k]:
            out.append(1.0)
            continue
        for _ in range(30):  # flipping is monotone in the factor: the box only grows
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if flips(mid)[k] else (mid, hi)
        out.append(lo)
    return out


def err_rate(stop: StopTest, history, verdict=None) -> float | None:
    """How fast the strength errors fall: the median over segments of log2(error at the last
    estimate with half the evaluations / error now) (1.0 is errors ~ 1/N). `verdict`: the one
    to read the errors from (default `stop.verdict`)."""
    verdict = verdict or stop.verdict
    now = verdict(history)
    half = [i for i, e in enumerate(history) if 2 * e.steps <= history[-1].steps]
    then = verdict(history[:half[-1] + 1]) if half else None
    if now is None or then is None:
        return None
    ok = (now.strength_err > 0) & (then.strength_err > 0)
    return float(np.median(np.log2(then.strength_err[ok] / now.strength_err[ok]))) if ok.any() else None


def analyze(args: argparse.Namespace) -> None:
    from machine import machine

    from segsft.method.metrics import SegmentRule
    from segsft.method.selection_config import SelectConfig

    select_cfg = SelectConfig()
    # The product's defaults, as the study names them (asked here, not at import: compute needs no row).
    default_row = default_candidate(AttributeConf(), args.adaptive_max)
    per_trace: list[dict] = []
    frontier: list[dict] = []
    for row, seq in traces(args.traces, args.model, args.whole, args.max_tokens, args.min_tokens):
        baseline = "pad"
        file = cache_file(args.cache, args.tag, row["id"], baseline)
        if not file.exists():
            continue
        cache = PointCache(file)
        rule = SegmentRule(seq.segment_tokens, select_cfg, seq.train_tokens)
        a_all, f_all = cache.sorted_f()
        delta = f_all[-1] - f_all[0]
        replay = Replay(cache, args.adaptive_max, args.per_round)
        if replay.max_steps < 2 * 9:
            continue  # not even one doubling cached yet
        adaptive_full = replay()
        levels = [k for k in range(2, 16) if all(float(x) in cache.points for x in np.linspace(0, 1, 2**k + 1))]
        kmax = levels[-1]
        if kmax < args.min_ref_level:
            print(f"{row['id']}: skipped, its densest uniform grid cached has {2**kmax + 1} points "
                  f"(< 2^{args.min_ref_level} + 1): compute more first", flush=True)
            continue
        dense = np.linspace(0, 1, 2**kmax + 1)
        # The reference is the densest uniform grid: independent of the rule under test.
        ref_u = estimate_of(cache, dense, trapezoid_weights(dense))
        ref_train, ref_strength = rule(ref_u)
        ad_train = rule(adaptive_full.final.token_attr)[0]
        # The most accurate estimate cached (the smaller error bound of the two references): what
        # a strength error estimate should cover.
        f_d, _ = cache(dense)
        bound_u = float(local_errors(dense, f_d, cache(dense)[1].sum(axis=1)).sum() / abs(delta))
        best = ref_u if bound_u <= adaptive_full.final.error_sum else adaptive_full.final.token_attr
        best_strength = rule.metrics(best)[0]
        roughness = float(np.abs(np.diff(f_all)).sum() / abs(delta))
        n_seg = len(seq.segment_tokens)
        base = {"trace": row["id"], "baseline": baseline, "n_tokens": int(seq.answer_positions[-1]) + 1,
                "n_segments": n_seg, "roughness": roughness, "ref": f"uniform-{2**kmax + 1}",
                "ref_agrees_adaptive_ref": float((ref_train == ad_train).mean()),
                "adaptive_ref_steps": adaptive_full.final.steps, "ref_bound_uniform": bound_u,
                "ref_bound_adaptive": float(adaptive_full.final.error_sum),
                "seconds_per_eval": cache.seconds / cache.timed if cache.timed else None}

        def row_of(name: str, family: str, cost: int, a: np.ndarray, **extra) -> dict:
            train, strength = rule(a)
            return {**base, "candidate": name, "family": family, "cost": cost,
                    "gap": abs(float(a.sum()) - delta) / abs(delta),
                    "agree_ref": float((train == ref_train).mean()),
                    "spearman_ref": spearman(strength, ref_strength), **extra}

        rows = []
        for k in levels:
            nodes = np.linspace(0, 1, 2**k + 1)
            rows.append(row_of(f"uniform-{2**k + 1}", "uniform", 2**k + 1, estimate_of(cache, nodes, trapezoid_weights(nodes))))
        for r, steps in FIXED:
            a, w = quadrature(r, steps)
            if all(float(x) in cache.points for x in a):
                rows.append(row_of(f"{r}-{steps}", r, steps, estimate_of(cache, a, w)))
        for tg, ts in LEGACY:
            p = replay(LegacyStop(tg, ts, rule))
            tight = replay(LegacyStop(tg / 4, ts, rule))
            rows.append(row_of(f"legacy-g{tg}-s{ts}", "legacy", p.final.steps, p.final.token_attr,
                               converged=p.converged, bound=float(p.final.error_sum),
                               agree_4x_tighter=float((rule(p.final.token_attr)[0] == rule(tight.final.token_attr)[0]).mean())))
        def adaptive_row(name: str, make_stop, tg: float, mb: float, max_steps: int | None = None,
                         focus: bool = False, whole_budget: bool = False) -> dict | None:
            stop = make_stop(tg)
            p = replay(stop, max_steps, focus)
            if p is None:
                return None  # the points of this candidate are not cached (compute them first)
            # The cache ends before max_steps on this trace: keeping the others would leave only
            # converged traces in the row, so the whole row is left out of the tables (`summarize`).
            short = whole_budget and not p.converged and p.final.steps < max_steps
            v = stop.verdict(p.history)
            tight = replay(make_stop(tg / 4), max_steps, focus)
            # The stricter check: 4x tighter and at least twice the evaluations (to the cache's limit).
            tight2 = replay(AtLeast(make_stop(tg / 4), 2 * p.final.steps), max_steps, focus)
            if whole_budget:  # a tighter run the cache cuts short is not measured (compute --focus-tight)
                tight, tight2 = (None if t is None or (not t.converged and t.final.steps < max_steps) else t
                                 for t in (tight, tight2))
            train = rule(p.final.token_attr)[0]
            flag = np.zeros(n_seg, bool) if v is None else (v.borderline | ~v.settled)
            firm = ~flag
            t_train = None if tight is None else rule(tight.final.token_attr)[0]
            t2_train = None if tight2 is None else rule(tight2.final.token_attr)[0]
            # Is the error estimate honest? The change to the most accurate estimate within it, on
            # what the errors measure (the stop test's own formula, with that estimate as the earlier one).
            covers = None if v is None else float(
                (stop.strength_errors(v.strength, [best_strength]) <= v.strength_err + 1e-12).mean())
            settle = {}
            if (name in (default_row, "refine_on-decisions") or whole_budget) and v is not None:
                # The flags the default leaves: how near the reference itself is to flipping them.
                settle = {"err_rate": err_rate(stop, p.history), "flagged": np.flatnonzero(flag).tolist(),
                          "shrink_to_settle": shrink_to_settle(rule, ref_train, *rule.metrics(ref_u), v.strength_err,
                                                               v.consistency_err, flag)}
            return row_of(
                name, "adaptive", p.final.steps, p.final.token_attr,
                target_gap=tg, max_borderline=mb, converged=p.converged, bound=float(p.final.error_sum),
                borderline=int(flag.sum()), firm=int(firm.sum()),
                firm_agree_ref=int((train == ref_train)[firm].sum()),
                firm_agree_4x=None if tight is None else int((train == t_train)[firm].sum()),
                tight_converged=None if tight is None else tight.converged,
                tight_steps=None if tight is None else tight.final.steps,
                agree_4x_tighter=None if tight is None else float((train == t_train).mean()),
                firm_agree_4x2x=None if tight2 is None else int((train == t2_train)[firm].sum()),
                tight2_steps=None if tight2 is None else tight2.final.steps,
                strength_err_max=None if v is None else float(v.strength_err.max(initial=0.0)),
                err_covers_ref=covers, cache_short=short, **settle)

        for tg in BOUNDS:
            for mb in MAX_BORDERLINE:
                rows.append(adaptive_row(f"bound-g{tg}-b{mb}", lambda g, mb=mb: StopTest(g, 1.0, rule, max_borderline=mb),
                                         tg, mb))
        tg, mb = DEFAULT_GAP, DEFAULT_MAX_BORDERLINE
        for window, margin, errors in MARGINS:
            rows.append(adaptive_row(f"margin-{window}-{margin}-{errors}", lambda g, w=window, m=margin, e=errors: MarginVariant(
                g, 1.0, rule, max_borderline=mb, window=w, margin=m, errors=e), tg, mb))
        for factor in SHARPER:
            rows.append(adaptive_row(f"sharper-{factor if isinstance(factor, str) else f'x{factor}'}",
                                     lambda g, f=factor: SharperErrors(g, 1.0, rule, max_borderline=mb, factor=f), tg, mb))
        on = AttributeConf().refine_on
        for cap in CAPS:  # the default with less budget (its points are the uncapped run's first ones)
            rows.append(adaptive_row(f"default-max{cap}", lambda g: StopTest(g, 1.0, rule, max_borderline=mb, refine_on=on),
                                     tg, mb, max_steps=cap, focus=on == "decisions"))
        # ... and with more (compute --focus-max): only where the cache reaches it on every trace.
        for cap in MORE:
            rows.append(adaptive_row(f"default-max{cap}", lambda g: StopTest(g, 1.0, rule, max_borderline=mb, refine_on=on),
                                     tg, mb, max_steps=cap, focus=on == "decisions", whole_budget=True))
        # ... and past a soft cap only while it settles flags: the same run, cut where it stalls.
        for after, cap in STALL:
            make = lambda g: StopTest(g, 1.0, rule, max_borderline=mb, refine_on=on)  # noqa: E731
            full = replay(make(tg), cap, on == "decisions")
            if full is not None:
                # A run that converges past a doubling where its flags did not fall ends there instead.
                stop_at = stalled_at(make(tg), full.history, after)
                rows.append(adaptive_row(f"stall{after}-max{cap}", make, tg, mb, max_steps=stop_at or cap,
                                         focus=on == "decisions", whole_budget=stop_at is None))
        rows.append(adaptive_row("refine_on-decisions", lambda g: StopTest(
            g, 1.0, rule, max_borderline=mb, refine_on="decisions"), tg, mb, focus=True))
        rows = [r for r in rows if r is not None]
        rows.append(row_of(f"reference-uniform-{2**kmax + 1}", "reference", 2**kmax + 1, ref_u))
        rows.append(row_of("reference-adaptive", "reference", adaptive_full.final.steps, adaptive_full.final.token_attr))
        curve = [{"steps": e.steps, "gap": e.gap, "bound": e.error_sum,
                  "agree_ref": float((rule(e.token_attr)[0] == ref_train).mean())} for e in adaptive_full.history]
        frontier.append({"trace": row["id"], "baseline": baseline, "adaptive": curve})
        per_trace += rows
        print(f"{row['id']}: {base['n_tokens']} tok, {n_seg} seg, roughness {roughness:.1f}, reference "
              f"{base['ref']}, adaptive cached to {replay.max_steps}, references agree on "
              f"{base['ref_agrees_adaptive_ref']:.2f} of decisions", flush=True)
    table = summarize(per_trace)
    print_table(table)
    by_trace = default_by_trace(per_trace, default_row)
    print(f"\nthe default stop test per trace ({default_row}):")
    for t in by_trace:
        print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in t.items()))
    # A reference that disagrees with the other reference (the adaptive rule to its cache limit)
    # is not settled itself: a candidate's agreement there says little. The same table without them.
    unsettled = sorted({r["trace"] for r in per_trace if r["ref_agrees_adaptive_ref"] < 1.0})
    table_settled = summarize([r for r in per_trace if r["trace"] not in unsettled])
    print(f"\nthe same, only traces whose two references agree on every decision "
          f"(left out: {', '.join(unsettled) or 'none'}; they need a denser grid):")
    print_table(table_settled)
    out = {"machine": machine("torch", "transformers"), "model": args.model, "tag": args.tag, "whole": args.whole,
           "select": select_cfg.settings(), "adaptive_max": args.adaptive_max, "per_round": args.per_round,
           "date": time.strftime("%Y-%m-%d"), "traces": len({r["trace"] for r in per_trace}),
           "table": table, "default_by_trace": by_trace,
           **{f"default_max{cap}_by_trace": default_by_trace(per_trace, f"default-max{cap}") for cap in CAPS + MORE},
           # The default's test at the study's own cap (--adaptive-max), where the cache reaches it;
           # a cap that is one of CAPS/MORE already has its row, which this must not replace.
           **({} if args.adaptive_max in CAPS + MORE else {
               f"default_max{args.adaptive_max}_by_trace": default_by_trace(per_trace, "refine_on-decisions",
                                                                            cap=args.adaptive_max)}),
           "unsettled_references": unsettled, "table_settled_references": table_settled,
           "per_trace": per_trace, "frontier": frontier}
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


def default_candidate(conf: AttributeConf, adaptive_max: int) -> str:
    """The row of the product's defaults, as the study names it; a default the study has no row
    for is an error, not another row's figures."""
    if conf.refine_on != "decisions":
        return f"margin-doubling-{conf.margin}-share"
    if conf.max_steps in MORE or conf.max_steps in CAPS:
        return f"default-max{conf.max_steps}"
    if conf.max_steps == adaptive_max:
        return "refine_on-decisions"
    raise SystemExit(f"attribute.max_steps={conf.max_steps} has no row in the study: add it to CAPS or MORE, "
                     f"or run analyze with --adaptive-max {conf.max_steps}")


def uniform_grids(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """Per trace, (points, agreement with the reference) of each uniform grid."""
    grids: dict[str, list[tuple[int, float]]] = {}
    for r in rows:
        if r["candidate"].startswith(("uniform", "reference-uniform")):
            grids.setdefault(r["trace"], []).append((r["cost"], r["agree_ref"]))
    return grids


def uniform_for(grids: dict[str, list[tuple[int, float]]], r: dict) -> int | None:
    """The fewest uniform points from which on every denser grid of the trace reaches row `r`'s
    agreement (a 5-point grid that agrees by chance, with a 65-point one that does not, does not count)."""
    out = None
    for n, ag in sorted(grids.get(r["trace"], []), reverse=True):
        if ag < r["agree_ref"]:
            break
        out = n
    return out


def default_by_trace(rows: list[dict], candidate: str, cap: int | None = None) -> list[dict]:
    """The default stop test on each trace: evaluations against tokens and segments, what it
    decided, the uniform grid that reaches its agreement, its cost on this machine, and for the
    segments it leaves flagged how far their errors must shrink before the reference settles them."""
    grids = uniform_grids(rows)
    # How fast the errors fall, the study's median (a projection of evaluations from it and the
    # shrink factor missed by up to 15x: focused points settle a flag far faster than the median).
    rates = [r["err_rate"] for r in rows if r["candidate"] == candidate and r.get("err_rate") is not None]
    rate = float(np.median(rates)) if rates else None
    if any(r.get("cache_short") for r in rows if r["candidate"] == candidate):
        return []  # not computed on every trace (see `summarize`)
    out = []
    for r in rows:
        if r["candidate"] != candidate:
            continue
        shrink = r.get("shrink_to_settle") or []
        settle = {"flagged": r["flagged"], "shrink_to_settle": shrink, "err_rate_study": rate} if shrink else {}
        spe = r.get("seconds_per_eval")
        out.append({"trace": r["trace"], "tokens": r["n_tokens"], "segments": r["n_segments"],
                    "evaluations": r["cost"], "converged": r["converged"], "bound": r["bound"],
                    "borderline": r["borderline"], "agree_ref": r["agree_ref"], "ref": r["ref"],
                    "uniform_for_same_agreement": uniform_for(grids, r),
                    "seconds_per_eval": spe, "minutes_per_trace": None if spe is None else spe * r["cost"] / 60,
                    # With `cap`: the cache ends before it on this unconverged trace (not a run to the cap).
                    **({} if cap is None else {"short_of_cap": bool(not r["converged"] and r["cost"] < cap)}),
                    **settle})
    return out


def summarize(rows: list[dict]) -> list[dict]:
    """Per candidate: the median cost, the mean and the *worst* trace's agreement with the
    reference, how many traces it called converged while agreeing < 95%, and for the bound
    rule the borderline segments and the agreement of the others (pooled over the study)."""
    # A candidate that the cache cuts short on some trace (default-max512 where its points are not
    # computed) is not comparable: it would keep only the traces that converge sooner.
    short = {r["candidate"] for r in rows if r.get("cache_short")}
    keys = sorted({r["candidate"] for r in rows} - short, key=_order)
    grids = uniform_grids(rows)  # what a grid needs for a candidate's agreement
    table = []
    for c in keys:
        rs = [r for r in rows if r["candidate"] == c]
        t: dict = {"candidate": c, "traces": len(rs), "cost_median": float(np.median([r["cost"] for r in rs])),
                   "cost_max": int(max(r["cost"] for r in rs)),
                   "gap_median": float(np.median([r["gap"] for r in rs])),
                   "agree_ref_mean": float(np.mean([r["agree_ref"] for r in rs])),
                   "agree_ref_worst": float(min(r["agree_ref"] for r in rs)),
                   # Spearman is undefined (None) for fewer than two segments or a constant side.
                   "spearman_ref_median": (float(np.median(sp)) if (sp := [r["spearman_ref"] for r in rs
                                                                         if r["spearman_ref"] is not None]) else None)}
        if "converged" in rs[0]:
            conv = [r for r in rs if r["converged"]]
            t["converged_share"] = len(conv) / len(rs)
            t["converged_below_95"] = sum(r["agree_ref"] < 0.95 for r in conv)
            a4 = [r["agree_4x_tighter"] for r in rs if r["agree_4x_tighter"] is not None]
            t["agree_4x_tighter_mean"] = float(np.mean(a4)) if a4 else None
            t["agree_4x_tighter_worst_converged"] = float(min((r["agree_4x_tighter"] for r in conv
                                                               if r["agree_4x_tighter"] is not None), default=1.0))
            t["tighter_measured"] = len(a4)
        same = [n for n in (uniform_for(grids, r) for r in rs) if n is not None]
        if same and not c.startswith(("uniform", "reference")):
            t["uniform_for_same_agreement_median"] = float(np.median(same))
        if "firm" in rs[0]:
            segs = sum(r["n_segments"] for r in rs)
            firm = sum(r["firm"] for r in rs)
            t["borderline_median"] = float(np.median([r["borderline"] for r in rs]))
            t["borderline_share"] = sum(r["borderline"] for r in rs) / segs
            t["firm_agree_ref"] = sum(r["firm_agree_ref"] for r in rs) / firm if firm else None
            conv = [r for r in rs if r["converged"]]
            # The target: on converged traces, every firm decision equals the 4x tighter run's.
            t["converged_firm_differs_4x"] = sum(r["firm"] - r["firm_agree_4x"] for r in conv
                                                 if r["firm_agree_4x"] is not None)
            # ... and those of a run 4x tighter with at least twice the evaluations (not blind
            # where the bound already meets the tighter target).
            t["converged_firm_differs_4x2x"] = sum(r["firm"] - r["firm_agree_4x2x"] for r in conv
                                                   if r.get("firm_agree_4x2x") is not None)
            # Converged traces whose tighter run is not cached (compute --focus-tight): unchecked, not agreeing.
            t["converged_unchecked_4x2x"] = sum(r.get("firm_agree_4x2x") is None for r in conv)
            t["converged_firm_differs_ref"] = sum(r["firm"] - r["firm_agree_ref"] for r in conv)
            covers = [r["err_covers_ref"] for r in rs if r.get("err_covers_ref") is not None]
            t["err_covers_ref_mean"] = float(np.mean(covers)) if covers else None
        table.append(t)
    return table


def _order(name: str) -> tuple:
    fam = name.split("-")[0]
    return ({"reference": 0, "uniform": 1, "linspace": 2, "gauss_legendre": 3, "legacy": 4, "bound": 5, "default": 6,
             "margin": 7, "sharper": 8}.get(fam, 9), name)


def print_table(table: list[dict]) -> None:
    cols = [("cost_median", "cost"), ("agree_ref_mean", "agree"), ("agree_ref_worst", "worst"),
            ("converged_share", "conv"), ("converged_below_95", "conv<95%"), ("agree_4x_tighter_worst_converged", "4x worst"),
            ("borderline_median", "bl med"), ("borderline_share", "bl share"), ("firm_agree_ref", "firm agree"),
            ("converged_firm_differs_4x", "firm!=4x"), ("converged_firm_differs_4x2x", "!=4x,2x"), ("converged_unchecked_4x2x", "unchecked"),
            ("err_covers_ref_mean", "err covers")]
    print(f"\n{'candidate':32s} {'n':>3s} " + " ".join(f"{h:>10s}" for _, h in cols))
    for t in table:
        cells = [f"{t[c]:10.3g}" if t.get(c) is not None else f"{'':10s}" for c, _ in cols]
        print(f"{t['candidate']:32s} {t['traces']:3d} " + " ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["compute", "analyze", "all"], help="all = compute, then analyze")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--traces", type=int, default=16)
    p.add_argument("--whole", action="store_true", help="whole traces, no cut, shortest first")
    p.add_argument("--max-tokens", type=int, default=0, help="--whole: only traces of at most this many tokens")
    p.add_argument("--min-tokens", type=int, default=0, help="--whole: only traces of more than this many tokens")
    p.add_argument("--baselines", default="pad,zero,mean,pad_trace")
    p.add_argument("--levels", type=int, default=8, help="uniform grids up to 2^levels + 1 points (pad baseline)")
    p.add_argument("--other-levels", type=int, default=6, help="the same for the other baselines")
    p.add_argument("--adaptive-max", type=int, default=256)
    p.add_argument("--per-round", type=int, default=1)
    p.add_argument("--batch", type=int, default=4, help="points per forward/backward pass")
    p.add_argument("--no-fixed", action="store_true", help="skip today's fixed rules")
    p.add_argument("--no-focus", action="store_true", help="skip the points of attribute.refine_on=decisions")
    p.add_argument("--focus-max", type=int, default=0,
                   help="compute: run the points of refine_on=decisions to this many (default --adaptive-max)")
    p.add_argument("--focus-tight", choices=["all", "converged", "none"], default="all",
                   help="compute: the focused points of the 4x tighter run too (all), only where the default "
                        "converges (converged: the stricter check's run, twice the evaluations, to the cap), or not")
    p.add_argument("--ids", default="", help="compute: only these trace ids, in this order (comma-separated)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tag", default="cpu-fp32", help="cache subfolder: keep devices and dtypes apart")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--store", default="float32", help="dtype of the cached integrand (float16 halves a transfer)")
    p.add_argument("--min-ref-level", type=int, default=6,
                   help="analyze: skip traces whose densest uniform grid has fewer than 2^this + 1 points")
    p.add_argument("--budget", type=float, default=0, help="seconds; stop (resumably) after this")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "convergence_study.json"))
    args = p.parse_args()
    if args.what in ("compute", "all"):
        compute(args)
    if args.what in ("analyze", "all"):
        analyze(args)


if __name__ == "__main__":
    main()
