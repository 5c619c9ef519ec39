"""Is integrated gradients worth its cost? Cheap per-segment signals against IG, and what they cost.

    .venv/bin/python bench/cheap_signals.py [--traces 16] [--out bench/results/cheap_signals.json]

1. Real traces (../shared/data, cut at segment boundaries to 270-400 SmolLM2 tokens, as the
   convergence study cuts them) attributed by the real entry point with SmolLM2-135M in fp32 on
   this machine, at the default rule (adaptive) with attribute.token_stats=true.
2. Cost: IG at the default rule and the token-statistics pass (one forward, chunked logits)
   timed back to back on the same traces in one process.
3. Agreement at equal budget: select.method=attribution, random, and score by each signal
   (both orders), then stage=compare: Jaccard of the kept segments against IG's, and the
   Spearman correlation of each signal with IG strength, per sample.
4. The select sweep over four methods on 10,000 synthetic samples (50 segments each, as the
   selection benchmark makes them), timed end to end (target: under a minute).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from segsft.config_schema import ModelConf  # noqa: E402

from machine import machine as _machine  # noqa: E402

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
SIGNALS = ("nll_mean", "entropy_mean", "gxi_abs_sum")


def pipeline(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(REPO / "pipeline.py"), *args], cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=7200)
    if r.returncode:
        raise SystemExit(f"pipeline {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return r


def corpus(path: Path, n: int) -> int:
    from traces import load_rows, window_rows

    from segsft.run.models import load_tokenizer
    from segsft.method.text import resolve_pattern

    tok = load_tokenizer(ModelConf(name_or_path=MODEL))
    rows = window_rows(tok, sorted(load_rows(), key=lambda r: r["id"]), resolve_pattern("default"))[:n]
    path.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "solution", "answer")}) + "\n" for r in rows))
    return len(rows)


def cost_in_process(corpus_path: Path, n: int) -> dict:
    """IG at the default rule and the token-statistics pass, timed back to back on the same
    traces in one process (equal conditions), SmolLM2 fp32 on this machine's CPU."""
    import numpy as np
    import torch

    from segsft.method.adaptive import AdaptiveSettings
    from segsft.method.batching import attribute_sequence
    from segsft.method.ig import freeze
    from segsft.method.metrics import SegmentRule
    from segsft.method.token_stats import token_stats
    from segsft.store.corpus import read_corpus
    from segsft.run.models import load_model, load_tokenizer, pad_token_id
    from segsft.method.selection_config import SelectConfig
    from segsft.method.text import build_sequence, resolve_pattern

    torch.set_num_threads(os.cpu_count() or 1)
    tok = load_tokenizer(ModelConf(name_or_path=MODEL))
    model = freeze(load_model(ModelConf(name_or_path=MODEL), torch.device("cpu"), torch.float32).eval())
    samples, _ = read_corpus(corpus_path, {"id": "id"})
    ig_s, st_s, evals, tokens = [], [], [], []
    for s in samples[:n]:
        seq = build_sequence(tok, s.question, s.solution, resolve_pattern("default"), s.answer)
        k = int(seq.answer_positions[-1]) + 1
        ids, pos = torch.as_tensor(seq.input_ids[:k]), torch.as_tensor(seq.answer_positions)
        t0 = time.perf_counter()
        res = attribute_sequence(model, ids, pos, rule="adaptive", steps=16, baseline="pad", pad_id=pad_token_id(tok),
                                 batch_alphas=8, max_batch_tokens=0, adaptive=AdaptiveSettings(),
                                 decide=SegmentRule(seq.segment_tokens, SelectConfig(), seq.train_tokens),
                                 trace_tokens=seq.trace_tokens)
        t1 = time.perf_counter()
        token_stats(model, ids)
        t2 = time.perf_counter()
        ig_s.append(t1 - t0)
        st_s.append(t2 - t1)
        evals.append(res.steps_used)
        tokens.append(k)
    share = sum(st_s) / sum(ig_s)
    return {"traces": len(ig_s), "median_tokens": int(np.median(tokens)), "median_gradient_evaluations": int(np.median(evals)),
            "ig_s": round(sum(ig_s), 2), "token_stats_s": round(sum(st_s), 3),
            "token_stats_share_of_ig": round(share, 4), "target_share": 0.10, "met": share <= 0.10}


def sweep_speed(root: Path, samples: int = 10_000, segments: int = 50) -> dict:
    from segsft.store.layout import RunLayout
    from segsft.select.synthetic import random_tables, write_part

    run_dir = root / "sweep"
    seg, smp = random_tables(samples, segments, seed=1)
    write_part(RunLayout(run_dir).attribution.dir, seg, smp)
    t0 = time.monotonic()
    pipeline("--multirun", "stage=select", f"run_dir={run_dir}", "select.method=attribution,random,score,full",
             "select.score=nll_mean")
    wall = time.monotonic() - t0
    dirs = [s.dir.name for s in RunLayout(run_dir).selections() if s.finished()]
    return {"samples": samples, "segments_per_sample": segments, "rows": samples * segments, "methods": 4,
            "selections": dirs, "wall_s": round(wall, 1), "target_s": 60.0, "met": wall < 60.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--traces", type=int, default=16)
    ap.add_argument("--cost-traces", type=int, default=4, help="traces the cost is timed on (IG and statistics back to back)")
    ap.add_argument("--keep", help="keep the run here (default: a temporary directory)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "cheap_signals.json"))
    ap.add_argument("--cost-only", type=int, metavar="N",
                    help="only time IG and the token statistics back to back on N traces; update --out's cost")
    args = ap.parse_args()
    if args.cost_only:
        with tempfile.TemporaryDirectory() as d:
            corpus(Path(d) / "t.jsonl", args.traces)
            cost = cost_in_process(Path(d) / "t.jsonl", args.cost_only)
        out = Path(args.out)
        report = json.loads(out.read_text()) if out.is_file() else {}
        report["cost"] = {**cost, "machine": _machine("torch"), "how": "in one process, back to back (cost_in_process)"}
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"IG {cost['ig_s']} s, token statistics {cost['token_stats_s']} s on {cost['traces']} traces: "
              f"{100 * cost['token_stats_share_of_ig']:.1f}% (target <= 10%) -> {out}")
        return
    import polars as pl

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cheap-signals-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        cpath = root / "traces.jsonl"
        n = corpus(cpath, args.traces)
        run_dir = root / "run"
        t0 = time.monotonic()
        if not (run_dir / "attribution").is_dir():
            pipeline("stage=attribute", f"run_dir={run_dir}", f"data.path={cpath}", f"model.name_or_path={MODEL}",
                     "attribute.token_stats=true", "attribute.device=cpu")
        attribute_s = time.monotonic() - t0
        cost = cost_in_process(cpath, args.cost_traces)
        methods = [("attribution",), ("random",)] + [("score", s, o) for s in SIGNALS for o in ("high", "low")]
        for m in methods:
            extra_args = [f"select.method={m[0]}"] + ([f"select.score={m[1]}", f"select.order={m[2]}"] if len(m) > 1 else [])
            pipeline("stage=select", f"run_dir={run_dir}", *extra_args)
        pipeline("stage=compare", f"run_dir={run_dir}")
        table = pl.read_parquet(run_dir / "compare" / "agreement.parquet")
        ig = table.filter(pl.col("a").str.starts_with("attribution") | pl.col("b").str.starts_with("attribution"))
        rows = []
        for r in ig.iter_rows(named=True):
            other = r["b"] if r["a"].startswith("attribution") else r["a"]
            rows.append({"selection": other, "jaccard_mean": r["jaccard_mean"], "jaccard_median": r["jaccard_median"],
                         "spearman_mean": r["spearman_mean"], "spearman_median": r["spearman_median"]})
        rows.sort(key=lambda r: -(r["jaccard_mean"] or 0))
        speed = sweep_speed(root)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(f"{n} traces attributed in {attribute_s:.0f} s; cost timed on {cost['traces']}: {cost['median_tokens']} tokens "
          f"median, {cost['median_gradient_evaluations']} gradient evaluations median")
    print(f"token statistics: {cost['token_stats_s']:.2f} s against IG {cost['ig_s']:.1f} s on {cost['traces']} traces "
          f"= {100 * cost['token_stats_share_of_ig']:.1f}% of the IG time (target <= 10%)")
    print(f"\n{'selection (vs attribution)':<44} {'Jaccard mean':>12} {'median':>7} {'Spearman mean':>14} {'median':>7}")

    def f(v):
        return "     -" if v is None else f"{v:6.3f}"

    for r in rows:
        print(f"{r['selection']:<44} {f(r['jaccard_mean']):>12} {f(r['jaccard_median']):>7} "
              f"{f(r['spearman_mean']):>14} {f(r['spearman_median']):>7}")
    print(f"\nselect sweep, 4 methods x {speed['samples']} samples x {speed['segments_per_sample']} segments: "
          f"{speed['wall_s']} s (target < 60 s)")
    from segsft.method.adaptive import AdaptiveSettings

    report = {"what": __doc__.strip().splitlines()[0], "machine": _machine("torch", "transformers", "polars"),
              "date": time.strftime("%Y-%m-%d"), "model": MODEL, "dtype": "float32", "rule": "adaptive (defaults)",
              # The defaults change with the studies (max_steps 256 -> 1024 on 2026-12-04): say which.
              "adaptive": dataclasses.asdict(AdaptiveSettings()),
              "traces": n, "cost": cost, "agreement_with_ig": rows, "sweep": speed}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
