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
test, the select stage's own rule deciding) and compares it with the references: the
densest uniform grid and the adaptive rule at its largest budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from segsft.method.adaptive import AdaptivePath, StopTest, refine, spearman, trapezoid_weights  # noqa: E402
from segsft.method.quadrature import quadrature  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
FIXED = [("linspace", 20), ("linspace", 50), ("gauss_legendre", 16), ("gauss_legendre", 32), ("gauss_legendre", 64)]
CACHE = Path(os.environ.get("SEGSFT_STUDY_CACHE", Path.home() / ".cache" / "segsft" / "convergence"))


class PointCache:
    """f and g at every alpha ever computed for one (trace, baseline, dtype): computes only
    the alphas it lacks, in one call, and saves after each call (atomic rename)."""

    def __init__(self, file: Path, path_fn=None, store: str = "float32"):
        self.file, self.path_fn, self.store = file, path_fn, store
        self.points: dict[float, tuple[float, np.ndarray]] = {}
        if file.exists():
            z = np.load(file)
            for a, f, g in zip(z["alphas"], z["f"], z["g"]):
                self.points[float(a)] = (float(f), g.astype(np.float64))
        self.computed = 0

    def __call__(self, alphas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        alphas = np.asarray(alphas, dtype=np.float64)
        missing = sorted({float(a) for a in alphas} - set(self.points))
        if missing:
            if self.path_fn is None:
                raise KeyError(f"{len(missing)} points not in {self.file} (run `compute` first)")
            f, g = self.path_fn(np.array(missing))
            for a, fa, ga in zip(missing, f, g):
                self.points[a] = (float(fa), np.asarray(ga, dtype=np.float64))
            self.computed += len(missing)
            self.save()
        return (np.array([self.points[float(a)][0] for a in alphas]),
                np.stack([self.points[float(a)][1] for a in alphas]))

    def save(self) -> None:
        a = np.array(sorted(self.points))
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp.npz")
        np.savez(tmp, alphas=a, f=np.array([self.points[x][0] for x in a]),
                 g=np.stack([self.points[x][1] for x in a]).astype(self.store))
        os.replace(tmp, self.file)

    def sorted_f(self) -> tuple[np.ndarray, np.ndarray]:
        a = np.array(sorted(self.points))
        return a, np.array([self.points[x][0] for x in a])


def traces(n: int, model: str = MODEL, whole: bool = False, max_tokens: int = 0) -> list[tuple[dict, object]]:
    """The cut traces (the first `n` windows by id) or, with `whole`, the whole traces, no
    cut, shortest first, those of at most `max_tokens` tokens (0 = all), the first `n`."""
    from traces import load_rows, window_rows

    from segsft.run.models import load_tokenizer
    from segsft.method.text import build_sequence, resolve_pattern

    tok = load_tokenizer({"name_or_path": model})
    rx = resolve_pattern("default")
    rows = sorted(load_rows(), key=lambda r: r["id"])
    if not whole:
        rows = window_rows(tok, rows, rx)[:n]
        return [(r, build_sequence(tok, r["question"], r["solution"], rx, r["answer"])) for r in rows]
    items = [(r, build_sequence(tok, r["question"], r["solution"], rx, r["answer"])) for r in rows]
    items = sorted(items, key=lambda it: len(it[1].input_ids))
    return [it for it in items if not max_tokens or len(it[1].input_ids) <= max_tokens][:n]


def cache_file(cache: Path, tag: str, trace_id: str, baseline: str) -> Path:
    return cache / tag / f"{trace_id}--{baseline}.npz"


def compute(args: argparse.Namespace) -> None:
    import torch

    from segsft.method.ig import IGPath, freeze
    from segsft.run.models import DTYPES, load_model, load_tokenizer, pad_token_id

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = {"name_or_path": args.model}
    tok = load_tokenizer(cfg)
    model = freeze(load_model(cfg, device, DTYPES[args.dtype]).eval())
    pad = pad_token_id(tok)
    started = time.time()
    items = traces(args.traces, args.model, args.whole, args.max_tokens)
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
            cache = PointCache(cache_file(args.cache, args.tag, row["id"], baseline), ig, args.store)
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
            print(f"{args.tag} {baseline:9s} {row['id']}: {len(cache.points)} points cached, {cache.computed} new "
                  f"in {time.time() - t0:.0f}s", flush=True)


# ---------------------------------------------------------------- analysis


def decide_fn(seq, select_cfg):
    """The stop test's decider, memoised by estimate: replays ask for the same ones often."""
    from segsft.method.metrics import segment_decider

    decide = segment_decider(seq.segment_tokens, select_cfg, seq.train_tokens)
    memo: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}

    def fn(token_attr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        key = token_attr.tobytes()
        if key not in memo:
            memo[key] = decide(token_attr)
        return memo[key]

    return fn


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

    def __call__(self, stop=None) -> AdaptivePath:
        return refine(self.cache, max_steps=self.max_steps, per_round=self.per_round, stop=stop)


def estimate_of(cache: PointCache, alphas: np.ndarray, weights: np.ndarray) -> np.ndarray:
    return weights @ cache(alphas)[1]


def analyze(args: argparse.Namespace) -> None:
    from machine import machine

    from segsft.method.selection_config import SelectConfig

    select_cfg = SelectConfig()
    gaps = [0.2, 0.1, 0.05, 0.025, 0.0125]
    stabs = [0.9, 0.95, 1.0]
    per_trace: list[dict] = []
    frontier: list[dict] = []
    for row, seq in traces(args.traces, args.model, args.whole, args.max_tokens):
        for baseline in args.baselines.split(","):
            file = cache_file(args.cache, args.tag, row["id"], baseline)
            if not file.exists():
                continue
            cache = PointCache(file)
            decide = decide_fn(seq, select_cfg)
            a_all, f_all = cache.sorted_f()
            f0, f1 = f_all[0], f_all[-1]
            delta = f1 - f0
            replay = Replay(cache, args.adaptive_max, args.per_round)
            adaptive_full = replay()
            # The references: the densest uniform grid and the adaptive rule at its largest
            # budget, from this cache or (--ref-tag, e.g. fp32 for a bf16 run) another one.
            ref_cache = cache
            if args.ref_tag:
                rf = cache_file(args.cache, args.ref_tag, row["id"], baseline)
                if not rf.exists():
                    continue
                ref_cache = PointCache(rf)
            levels = [k for k in range(2, 16) if all(float(x) in cache.points for x in np.linspace(0, 1, 2**k + 1))]
            ref_levels = [k for k in range(2, 16) if all(float(x) in ref_cache.points for x in np.linspace(0, 1, 2**k + 1))]
            kmax = ref_levels[-1]
            dense = np.linspace(0, 1, 2**kmax + 1)
            ref_u = estimate_of(ref_cache, dense, trapezoid_weights(dense))
            ref_a = (Replay(ref_cache, args.ref_adaptive_max, args.ref_per_round)() if args.ref_tag else adaptive_full).final.token_attr
            ref_train, ref_strength = decide(ref_a)
            roughness = float(np.abs(np.diff(f_all)).sum() / abs(delta))

            def row_of(name: str, family: str, cost: int, a: np.ndarray, a_double: np.ndarray | None, **extra) -> dict:
                train, strength = decide(a)
                out = {"trace": row["id"], "baseline": baseline, "candidate": name, "family": family, "cost": cost,
                       "gap": abs(float(a.sum()) - delta) / abs(delta),
                       "agree_ref": float((train == ref_train).mean()),
                       "spearman_ref": spearman(strength, ref_strength), **extra}
                if a_double is not None:
                    out["stability_doubling"] = float((train == decide(a_double)[0]).mean())
                return out

            rows = []
            for k in levels:
                nodes = np.linspace(0, 1, 2**k + 1)
                nxt = np.linspace(0, 1, 2 ** (k + 1) + 1) if k + 1 in levels else None
                rows.append(row_of(f"uniform-{2**k + 1}", "uniform", 2**k + 1, estimate_of(cache, nodes, trapezoid_weights(nodes)),
                                   None if nxt is None else estimate_of(cache, nxt, trapezoid_weights(nxt))))
            for rule, steps in FIXED:
                a, w = quadrature(rule, steps)
                if not all(float(x) in cache.points for x in a):
                    continue
                a2, w2 = quadrature(rule, 2 * steps)
                doubled = estimate_of(cache, a2, w2) if all(float(x) in cache.points for x in a2) else None
                rows.append(row_of(f"{rule}-{steps}", rule, steps, estimate_of(cache, a, w), doubled))
            for tg in gaps:
                for ts in stabs:
                    for ranks in (False, True):
                        stop = StopTest(tg, ts, decide, ranks=ranks)
                        p = replay(stop)
                        share, rho = stop.stability(p.history)
                        # 4x tighter gap target, same stability target: do the selections agree?
                        tight = replay(StopTest(tg / 4, ts, decide, ranks=ranks))
                        r = row_of(f"adaptive-g{tg}-s{ts}{'-r' if ranks else ''}", "adaptive", p.final.steps,
                                   p.final.token_attr, None, target_gap=tg, target_stability=ts, ranks=ranks,
                                   converged=p.converged, decision_stability=share, rank_stability=rho,
                                   agree_4x_tighter=float((decide(p.final.token_attr)[0] == decide(tight.final.token_attr)[0]).mean()))
                        rows.append(r)
            for r in rows:
                r.update(roughness=roughness, f0=float(f0), f1=float(f1), n_tokens=int(seq.answer_positions[-1]) + 1,
                         n_segments=len(seq.segment_tokens))
            ref_delta = ref_cache.sorted_f()[1][-1] - ref_cache.sorted_f()[1][0]
            ref_gap_u = abs(float(ref_u.sum()) - ref_delta) / abs(ref_delta)
            rows.append(row_of(f"reference-uniform-{2**kmax + 1}", "reference", 2**kmax + 1, ref_u, None,
                               roughness=roughness, ref_gap=ref_gap_u))
            rows.append(row_of("reference-adaptive", "reference", adaptive_full.final.steps,
                               ref_a, None, roughness=roughness))
            # The cost-gap frontier of the adaptive rule, every round.
            curve = [{"steps": e.steps, "gap": e.gap, "error_sum": e.error_sum,
                      "agree_ref": float((decide(e.token_attr)[0] == ref_train).mean())} for e in adaptive_full.history]
            frontier.append({"trace": row["id"], "baseline": baseline, "adaptive": curve})
            per_trace += rows
            print(f"{row['id']} {baseline}: f(0)={f0:.2f} f(1)={f1:.2f} roughness {roughness:.1f}, "
                  f"uniform-{2**kmax + 1} gap {ref_gap_u:.3g}, adaptive-{adaptive_full.final.steps} gap "
                  f"{adaptive_full.final.gap:.3g}, references agree on {float((decide(ref_u)[0] == ref_train).mean()):.2f} "
                  f"of decisions", flush=True)
    table = summarize(per_trace)
    print_table(table)
    out = {"machine": machine("torch", "transformers"), "model": args.model, "tag": args.tag, "select": select_cfg.settings(),
           "adaptive_max": args.adaptive_max, "per_round": args.per_round, "date": time.strftime("%Y-%m-%d"),
           "table": table, "per_trace": per_trace, "frontier": frontier}
    Path(args.out).write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


def summarize(rows: list[dict]) -> list[dict]:
    keys = sorted({(r["baseline"], r["candidate"]) for r in rows}, key=lambda k: (k[0], _order(k[1])))
    table = []
    for b, c in keys:
        rs = [r for r in rows if r["baseline"] == b and r["candidate"] == c]
        t = {"baseline": b, "candidate": c, "traces": len(rs)}
        for m in ("cost", "gap", "agree_ref", "spearman_ref", "stability_doubling", "decision_stability",
                  "agree_4x_tighter", "roughness"):
            vals = [r[m] for r in rs if r.get(m) is not None]
            if vals:
                t[f"{m}_median"] = float(np.median(vals))
                if m in ("agree_ref", "stability_doubling", "agree_4x_tighter", "decision_stability"):
                    t[f"{m}_mean"] = float(np.mean(vals))
        if any("converged" in r for r in rs):
            t["converged_share"] = float(np.mean([bool(r["converged"]) for r in rs]))
        table.append(t)
    return table


def _order(name: str) -> tuple:
    fam = name.split("-")[0]
    return ({"reference": 0, "uniform": 1, "linspace": 2, "gauss_legendre": 3, "adaptive": 4}.get(fam, 5), name)


def print_table(table: list[dict]) -> None:
    cols = ["cost_median", "gap_median", "agree_ref_mean", "spearman_ref_median", "stability_doubling_mean",
            "decision_stability_mean", "agree_4x_tighter_mean", "converged_share"]
    print(f"\n{'baseline':9s} {'candidate':28s} {'n':>3s} " + " ".join(f"{c.replace('_median', '').replace('_mean', ''):>12.12s}" for c in cols))
    for t in table:
        cells = [f"{t[c]:12.3g}" if c in t else f"{'':12s}" for c in cols]
        print(f"{t['baseline']:9s} {t['candidate']:28s} {t['traces']:3d} " + " ".join(cells))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["compute", "analyze", "all"], help="all = compute, then analyze")
    p.add_argument("--model", default=MODEL)
    p.add_argument("--traces", type=int, default=16)
    p.add_argument("--whole", action="store_true", help="whole traces, no cut, shortest first")
    p.add_argument("--max-tokens", type=int, default=0, help="--whole: only traces of at most this many tokens")
    p.add_argument("--baselines", default="pad,zero,mean,pad_trace")
    p.add_argument("--levels", type=int, default=8, help="uniform grids up to 2^levels + 1 points (pad baseline)")
    p.add_argument("--other-levels", type=int, default=6, help="the same for the other baselines")
    p.add_argument("--adaptive-max", type=int, default=256)
    p.add_argument("--per-round", type=int, default=1)
    p.add_argument("--batch", type=int, default=4, help="points per forward/backward pass")
    p.add_argument("--no-fixed", action="store_true", help="skip today's fixed rules")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--tag", default="cpu-fp32", help="cache subfolder: keep devices and dtypes apart")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--ref-tag", default=None, help="analyze: take the references from this cache tag (e.g. gpu-fp32)")
    p.add_argument("--ref-adaptive-max", type=int, default=512)
    p.add_argument("--ref-per-round", type=int, default=4)
    p.add_argument("--store", default="float32", help="dtype of the cached integrand (float16 halves a transfer)")
    p.add_argument("--budget", type=float, default=0, help="seconds; stop (resumably) after this")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "convergence_study.json"))
    args = p.parse_args()
    if args.what in ("compute", "all"):
        compute(args)
    if args.what in ("analyze", "all"):
        analyze(args)


if __name__ == "__main__":
    main()
