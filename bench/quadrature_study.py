"""Which quadrature rule: every rule against Gauss-Legendre n=256, on real weights.

    python bench/quadrature_study.py                    # SmolLM2-135M, 3 shared traces, 448 tokens each
    python bench/quadrature_study.py --traces 6 --tokens 512

Traces are cut to fit by keeping the first 32 tokens of each segment, in order (cutting at
the start would keep only one or two segments, too few to compare selections).

The integrand g_k[t] is computed once per distinct path point (the union of every rule's
nodes), so each rule is a weighted sum of the same gradients. Per rule: the completeness
gap, the Spearman correlation of segment strength with the n=256 reference, and the
agreement of the selected-segment sets under the paper's thresholds (top_mass 0.7,
max_consistency 0.8, always [0, -2, -1]): Jaccard of the sets and the share of segments
with the same train decision. Prints a table; writes bench/results/quadrature_study.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from segsft.config_schema import ModelConf  # noqa: E402

from machine import machine  # noqa: E402
from traces import excerpt_sequence, load_rows  # noqa: E402

REFERENCE = ("gauss_legendre", 256)
RULES = [("linspace", 20), ("linspace", 50), ("trapezoid", 20), ("trapezoid", 50)] + [
    ("gauss_legendre", n) for n in (4, 8, 16, 32)]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) > 1 else 1.0


def selection(seg_rows: list[dict], n_tokens_seq: int) -> np.ndarray:
    import polars as pl

    from segsft.method.selection_config import SelectConfig
    from segsft.method.rule import attribution_rule

    lf = pl.LazyFrame([{**r, "sample_id": "s", "char_start": 0, "char_end": 0} for r in seg_rows])
    mask = attribution_rule(lf.drop("token_attr"), SelectConfig()).collect()
    return mask.sort("segment")["train"].to_numpy()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    p.add_argument("--traces", type=int, default=3)
    p.add_argument("--tokens", type=int, default=448)
    p.add_argument("--segment-tokens", type=int, default=32, help="tokens kept from the start of each segment")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "quadrature_study.json"))
    args = p.parse_args()
    import torch

    from segsft.method.ig import freeze, path_token_grads
    from segsft.method.metrics import segment_metrics
    from segsft.method.quadrature import quadrature
    from segsft.run.models import load_model, load_tokenizer, pad_token_id
    from segsft.method.text import resolve_pattern

    cfg = ModelConf(name_or_path=args.model)
    tok = load_tokenizer(cfg)
    model = freeze(load_model(cfg, torch.device("cpu"), torch.float32).eval())
    rx = resolve_pattern("default")
    rules = RULES + [REFERENCE]
    nodes = {r: quadrature(*r) for r in rules}
    points = np.unique(np.concatenate([a for a, _ in nodes.values()]))
    per_rule: dict[str, list[dict]] = {f"{r}:{n}": [] for r, n in rules}
    started = time.time()
    for row in sorted(load_rows(), key=lambda r: r["id"])[: args.traces]:
        _, seq = excerpt_sequence(tok, row, args.tokens, rx, args.segment_tokens)
        n = int(seq.answer_positions[-1]) + 1
        t0 = time.time()
        path = path_token_grads(model, torch.as_tensor(seq.input_ids[:n]), torch.as_tensor(seq.answer_positions),
                                points, pad_id=pad_token_id(tok), batch_alphas=1)
        print(f"trace {row['id']}: {n} tokens, {len(seq.segment_tokens)} segments, {len(points)} points "
              f"in {time.time() - t0:.0f}s", flush=True)
        ref_seg = None
        for r, k in [REFERENCE] + RULES:
            a, w = nodes[(r, k)]
            weights = np.zeros(len(points))
            np.add.at(weights, np.searchsorted(points, a), w)
            res = path.integrate(weights)
            seg = segment_metrics(res.token_attr, seq.segment_tokens)
            for i, s in enumerate(seg):
                s["segment"] = i
            strength = np.array([s["strength"] for s in seg])
            train = selection(seg, n)
            if ref_seg is None:
                ref_seg = (strength, train)
            rs, rt = ref_seg
            inter, union = (train & rt).sum(), (train | rt).sum()
            per_rule[f"{r}:{k}"].append({
                "trace": row["id"], "gap": res.completeness_gap, "spearman": spearman(strength, rs),
                "jaccard": float(inter / union) if union else 1.0, "same_decision": float((train == rt).mean()),
            })
    table = []
    for r, k in rules:
        rows = per_rule[f"{r}:{k}"]
        table.append({"rule": r, "steps": k,
                      "gap_median": float(np.median([x["gap"] for x in rows])),
                      "spearman_mean": float(np.mean([x["spearman"] for x in rows])),
                      "jaccard_mean": float(np.mean([x["jaccard"] for x in rows])),
                      "same_decision_mean": float(np.mean([x["same_decision"] for x in rows]))})
    bar = next(t for t in table if (t["rule"], t["steps"]) == ("linspace", 50))
    ok = [t for t in table if t["jaccard_mean"] >= bar["jaccard_mean"] and (t["rule"], t["steps"]) != REFERENCE]
    cheapest = min(ok, key=lambda t: (t["steps"], t["rule"] != "gauss_legendre"))
    print(f"\n{'rule':<15} {'steps':>5} {'gap median':>11} {'spearman':>9} {'jaccard':>8} {'same':>6}")
    for t in table:
        print(f"{t['rule']:<15} {t['steps']:>5} {t['gap_median']:>11.3e} {t['spearman_mean']:>9.3f} "
              f"{t['jaccard_mean']:>8.3f} {t['same_decision_mean']:>6.3f}")
    print(f"\ncheapest rule with selection agreement >= linspace n=50 ({bar['jaccard_mean']:.3f}): "
          f"{cheapest['rule']} n={cheapest['steps']}")
    result = {"machine": machine("torch", "transformers"), "model": args.model, "traces": args.traces,
              "tokens": args.tokens, "segment_tokens": args.segment_tokens, "reference": list(REFERENCE), "table": table, "per_trace": per_rule,
              "cheapest_at_least_linspace50": cheapest, "seconds": time.time() - started,
              "date": time.strftime("%Y-%m-%d")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
