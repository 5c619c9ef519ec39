"""Attribution engine vs the plain restatement of the reference, same model and inputs.

    python bench/attribute_engine.py                 # CPU defaults (issue 2)
    python bench/attribute_engine.py --steps 50 --samples 2

Model: a ~20M-parameter Qwen2 whose output layer is ~15% of its matmul parameters (as in
R1-Distill-Qwen-1.5B), random weights, a byte-level BPE tokenizer trained on the traces.
Inputs: traces from ../shared/data cut to --tokens tokens. Each method runs in its own
subprocess so that its peak RSS is its own. Prints a table; writes bench/results/*.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # the test yardsticks: tiny_model, reference

from machine import machine as _machine  # noqa: E402
from traces import cut_sequence, load_rows  # noqa: E402
CACHE = REPO / ".cache" / "bench"

# Qwen2 with d=384; the number of layers is set from the trained vocabulary so that the
# output layer is ~15% of the matmul parameters (~6.8k tokens: 7 layers, 14.7%, ~20M params).
CPU_MODEL = dict(hidden_size=384, num_attention_heads=6, num_key_value_heads=2,
                 intermediate_size=1536, tie_word_embeddings=False)
VOCAB = 8192
LM_HEAD_SHARE = 0.15


def layers_for(vocab: int) -> int:
    d, i, kv = CPU_MODEL["hidden_size"], CPU_MODEL["intermediate_size"], 2 * 64
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * i
    return max(1, round(vocab * d * (1 / LM_HEAD_SHARE - 1) / per_layer))


def machine() -> dict:
    return _machine("torch", "transformers")


def prepare(n_samples: int, n_tokens: int) -> Path:
    """Build (once) the model directory and the cut inputs; returns the cache dir."""
    import torch

    from segsft.method.text import resolve_pattern
    from tiny_model import save_tiny, tiny_qwen2, train_tokenizer

    d = CACHE / f"cpu20m-{n_samples}x{n_tokens}"
    if (d / "inputs.pt").exists():
        return d
    rows = load_rows()
    tok = train_tokenizer([r["solution"] for r in rows], vocab_size=VOCAB)
    model = tiny_qwen2(tok, num_hidden_layers=layers_for(len(tok)), **CPU_MODEL)
    save_tiny(d / "model", model, tok)
    rx = resolve_pattern("default")
    inputs = []
    for r in sorted(rows, key=lambda r: -len(r["solution"]))[:n_samples]:
        _, seq = cut_sequence(tok, r, n_tokens, rx)
        n = int(seq.answer_positions[-1]) + 1
        inputs.append({"ids": torch.as_tensor(seq.input_ids[:n]), "pos": torch.as_tensor(seq.answer_positions)})
    torch.save(inputs, d / "inputs.pt")
    n_params = sum(p.numel() for p in model.parameters())
    matmul = sum(p.numel() for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n)
    (d / "model_info.json").write_text(json.dumps({
        "vocab_size": len(tok), "num_hidden_layers": model.config.num_hidden_layers, "params": n_params, "matmul_params": matmul,
        "lm_head_share": model.lm_head.weight.numel() / matmul,
        "tokens": [int(len(x["ids"])) for x in inputs]}))
    return d


def worker(args: argparse.Namespace) -> None:
    """Run one method in this process and print a JSON line."""
    import psutil
    import torch
    from transformers import AutoModelForCausalLM

    from segsft.method.ig import freeze, integrated_gradients
    from reference import reference_ig

    d = Path(args.cache)
    inputs = torch.load(d / "inputs.pt")
    model = AutoModelForCausalLM.from_pretrained(d / "model", dtype=torch.float32).eval()
    pad = model.config.pad_token_id
    if args.method == "engine":
        freeze(model)
    rss0 = psutil.Process().memory_info().rss
    attrs, secs = [], []
    for x in inputs:
        t = time.perf_counter()
        if args.method == "engine":
            a = integrated_gradients(model, x["ids"], x["pos"], rule=args.rule, steps=args.steps,
                                     pad_id=pad, batch_alphas=args.batch_alphas).token_attr
        else:
            a = reference_ig(model, x["ids"], x["pos"], args.steps, pad)[0]
        secs.append(time.perf_counter() - t)
        attrs.append(a.tolist())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": secs, "peak_rss": peak, "rss_after_load": rss0, "attr": attrs}))


def run_method(cache: Path, method: str, batch: int, args: argparse.Namespace) -> dict:
    steps = args.reference_steps if method == "reference" and args.reference_steps else args.steps
    cmd = [sys.executable, __file__, "--worker", method, "--cache", str(cache), "--rule", args.rule,
           "--steps", str(steps), "--batch-alphas", str(batch)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rule", default="linspace", help="the engine's rule (the reference is always linspace)")
    p.add_argument("--reference-steps", type=int, help="the reference's steps (default: --steps)")
    p.add_argument("--batch-alphas", default="1,4", help="engine settings to time, comma-separated")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "attribute_engine_cpu.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.method = args.worker
        args.batch_alphas = int(args.batch_alphas)
        return worker(args)
    import numpy as np

    cache = prepare(args.samples, args.tokens)
    info = json.loads((cache / "model_info.json").read_text())
    runs = [("reference", 1)] + [("engine", int(b)) for b in args.batch_alphas.split(",")]
    res = [run_method(cache, m, b, args) for m, b in runs]
    rows = []
    for (m, b), r in zip(runs, res):
        steps = args.reference_steps if m == "reference" and args.reference_steps else args.steps
        tok_steps = sum(info["tokens"]) * steps
        total = sum(r["seconds"])
        diff = max(np.abs(np.asarray(a) - np.asarray(ref)).max() / np.abs(np.asarray(ref)).max()
                   for a, ref in zip(r["attr"], res[0]["attr"]))
        rows.append({"method": m, "rule": "linspace" if m == "reference" else args.rule, "steps": steps,
                     "batch_alphas": b, "s_per_sample": total / len(r["seconds"]), "tok_steps_per_s": tok_steps / total,
                     "peak_rss_mib": r["peak_rss"] / 2**20,
                     "peak_over_loaded_mib": (r["peak_rss"] - r["rss_after_load"]) / 2**20,
                     "max_rel_diff_vs_reference": float(diff) if args.rule == "linspace" and not args.reference_steps else None})
    result = {"machine": machine(), "model": {**CPU_MODEL, **info}, "samples": args.samples,
              "rows": rows, "date": time.strftime("%Y-%m-%d"),
              "note": "peak RSS includes the Python process and the loaded model; 'over load' subtracts the RSS after loading"}
    print(f"model: {info['params'] / 1e6:.1f}M params, {info['num_hidden_layers']} layers, vocab {info['vocab_size']}, "
          f"lm_head {100 * info['lm_head_share']:.1f}% of matmul params; {args.samples} traces of {info['tokens']} tokens; "
          f"{result['machine']['cpu']} x{result['machine']['nproc']}")
    print(f"{'method':<10} {'rule':<15} {'steps':>5} {'alphas/pass':>11} {'s/sample':>9} {'tok*steps/s':>12} "
          f"{'peak RSS MiB':>13} {'over load MiB':>14} {'speedup':>8} {'max rel diff':>12}")
    for r in rows:
        diff = f"{r['max_rel_diff_vs_reference']:.1e}" if r["max_rel_diff_vs_reference"] is not None else "-"
        print(f"{r['method']:<10} {r['rule']:<15} {r['steps']:>5} {r['batch_alphas']:>11} {r['s_per_sample']:>9.2f} "
              f"{r['tok_steps_per_s']:>12.0f} {r['peak_rss_mib']:>13.0f} {r['peak_over_loaded_mib']:>14.0f} "
              f"{rows[0]['s_per_sample'] / r['s_per_sample']:>7.2f}x {diff:>12}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
