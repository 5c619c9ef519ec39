"""Attribution on a GPU: the engine against the reference restatement, same card and inputs.

    bash bench/gpu/run.sh            # on the GPU machine: every measurement below, ~6 min on an H100

Models: the R1-Distill-Qwen 1.5B and 7B architectures (bench/configs/*.json) with random
bf16 weights; the real Qwen2.5 tokenizer (bench/qwen_tok.py); traces from ../shared/data
cut to each length (for lengths beyond the longest trace, traces are joined first).

Model FLOP utilisation counts, per path point of L tokens with N matmul parameters (the
embedding and output layer excluded: logits are needed only at the answer positions):
forward 2*N*L, backward to the inputs 2*N*L, attention 2*layers*L^2*d forward and 2.5x that
backward. MFU = those FLOPs / seconds / the card's dense bf16 peak.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # the test yardsticks: tiny_model, reference

from machine import machine  # noqa: E402
from traces import cut_sequence, load_rows  # noqa: E402

PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}


def peak_flops(name: str) -> float | None:
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def flops_per_point(cfg, seq_len: int) -> float:
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    n = layers * (2 * d * d + 2 * d * kv + 3 * d * cfg.intermediate_size)
    attn = 2 * layers * seq_len**2 * d
    return 4 * n * seq_len + attn * 3.5


def build_model(arch: Path, device, attn: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    spec = {k: v for k, v in json.loads(arch.read_text()).items() if not k.startswith("_")}
    cfg = Qwen2Config(**spec)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if device.type == "cuda" else torch.float32)
    with device:
        model = Qwen2ForCausalLM(cfg)
    torch.set_default_dtype(prev)
    with torch.no_grad():
        model.get_input_embeddings().weight[cfg.pad_token_id].normal_(0.0, 0.02)
    return model.eval()


def inputs_for(tok, length: int, count: int):
    import torch

    from segsft.method.text import resolve_pattern

    rows = sorted(load_rows(), key=lambda r: -len(r["solution"]))
    rx = resolve_pattern("default")
    out = []
    for i in range(count):
        row = dict(rows[i % len(rows)])
        j = i + 1
        while len(tok(row["solution"], add_special_tokens=False)["input_ids"]) < length:
            row["solution"] += rows[j % len(rows)]["solution"]  # long enough for the length asked
            j += 1
        _, seq = cut_sequence(tok, row, length, rx)
        n = int(seq.answer_positions[-1]) + 1
        out.append((torch.as_tensor(seq.input_ids[:n]), torch.as_tensor(seq.answer_positions)))
    return out


def timed(fn, device) -> tuple[float, float]:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - t, torch.cuda.max_memory_allocated() / 2**30
    return time.perf_counter() - t, float("nan")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default=str(REPO / "bench" / "configs" / "r1_distill_qwen_1_5b.json"))
    p.add_argument("--lengths", default="4096,8192,16384")
    p.add_argument("--traces", type=int, default=2)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--rule", default="linspace")
    p.add_argument("--methods", default="reference,engine")
    p.add_argument("--attn", default="sdpa")
    p.add_argument("--compile", action="store_true", help="torch.compile the model for the engine")
    p.add_argument("--max-batch-tokens", type=int, default=16384)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    import torch

    from segsft.method.batching import attribute_sequence
    from segsft.method.ig import freeze
    from reference import reference_ig
    from qwen_tok import qwen_tokenizer

    device = torch.device(args.device)
    tok = qwen_tokenizer()
    model = build_model(Path(args.arch), device, args.attn)
    cfg = model.config
    pad = cfg.pad_token_id
    gpu = torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu"
    peak = peak_flops(gpu)
    rows = []
    for length in [int(x) for x in args.lengths.split(",")]:
        inputs = [(i.to(device), q.to(device)) for i, q in inputs_for(tok, length, args.traces)]
        for method in args.methods.split(","):
            if method == "reference":
                for prm in model.parameters():
                    prm.requires_grad_(True)
                run = lambda ids, pos: reference_ig(model, ids, pos, args.steps, pad)  # noqa: E731
                m = model
            else:
                freeze(model)
                m = torch.compile(model, dynamic=True) if args.compile else model
                run = lambda ids, pos: attribute_sequence(  # noqa: E731
                    m, ids, pos, rule=args.rule, steps=args.steps, baseline="pad", pad_id=pad,
                    batch_alphas=args.steps, max_batch_tokens=args.max_batch_tokens)
            try:
                run(*inputs[0])  # warm-up (kernels, compile)
                secs, mems = [], []
                for ids, pos in inputs:
                    s, mem = timed(lambda: run(ids, pos), device)
                    secs.append(s)
                    mems.append(mem)
                status = "ok"
            except torch.OutOfMemoryError as e:
                secs, mems, status = [float("nan")], [float("nan")], f"OOM: {str(e).splitlines()[0]}"
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            per = sum(secs) / len(secs)
            L = int(inputs[0][0].shape[0])
            mfu = flops_per_point(cfg, L) * args.steps / per / peak if peak and status == "ok" else None
            row = {"arch": Path(args.arch).stem, "tokens": L, "method": method,
                   "rule": "linspace" if method == "reference" else args.rule, "steps": args.steps,
                   "attn": args.attn, "compile": bool(args.compile and method == "engine"),
                   "s_per_sample": per, "tok_steps_per_s": L * args.steps / per, "peak_gib": max(mems),
                   "mfu": mfu, "status": status}
            rows.append(row)
            print(json.dumps(row), flush=True)
    result = {"machine": machine("torch", "transformers"), "gpu": gpu, "peak_bf16_flops": peak,
              "flops_formula": "per point: 4*N*L + 3.5*2*layers*L^2*d (N: matmul params without embedding/lm_head)",
              "rows": rows, "date": time.strftime("%Y-%m-%d")}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
