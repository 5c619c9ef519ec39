"""Fine-tuning throughput and the share of tokens carrying loss, `full` vs `selected` (not a test).

A tiny Qwen2 (built from config, tokenizer trained on the traces) is fine-tuned through the
stage's own code (`segsft.finetune.run`, one process, no DeepSpeed) on the 30 real traces of
../shared/data (or segsft/data/sample_traces.jsonl when they are absent), every sequence cut to
--max-length tokens. `selected` uses a hand-made masks table: each keyword segment trained
with probability 0.5 (seeded), plus segments 0, -2, -1 (docs/method.md step 7's always_keep), which is
roughly what the paper's selection keeps. Tokens/s counts every input token (no padding:
sequences share one length) over whole epochs; the run is on CUDA when there is one.

    .venv/bin/python bench/finetune_bench.py [--samples 8 --steps 8 --max-length 1024 --batch 2 --repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # the test yardsticks: tiny_model, reference

from machine import machine as _machine  # noqa: E402

SHARED = REPO.parent / "shared" / "data" / "r1-distill-qwen-7b-aime24.jsonl"
SAMPLE = REPO / "segsft" / "data" / "sample_traces.jsonl"


def machine() -> dict:
    return _machine("torch", "transformers")


def write_inputs(d: Path, n: int, seed: int) -> tuple[Path, Path, str]:
    """Corpus, a hand-made masks table, the tiny model directory."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segsft.store.layout import SelectionLayout
    from segsft.schemas import MASKS_SCHEMA
    from segsft.method.text import resolve_pattern, split_segments
    from tiny_model import save_tiny, tiny_qwen2, train_tokenizer

    src = SHARED if SHARED.is_file() else SAMPLE
    rows = [json.loads(line) for line in src.read_text().splitlines() if line.strip()][:n]
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({k: r[k] for k in ("id", "question", "solution", "answer")}) + "\n" for r in rows))
    rnd, pattern, masks = random.Random(seed), resolve_pattern("default"), []
    for r in rows:
        segs = split_segments(r["solution"], pattern)
        keep = {0, len(segs) - 2, len(segs) - 1}
        for k, (a, b) in enumerate(segs):
            masks.append({"sample_id": str(r["id"]), "segment": k, "char_start": a, "char_end": b, "n_tokens": 0,
                          "train": k in keep or rnd.random() < 0.5, "why": "bench"})
    sel = SelectionLayout(d / "sel")
    sel.dir.mkdir()
    pq.write_table(pa.Table.from_pylist(masks, schema=MASKS_SCHEMA), sel.masks)
    tok = train_tokenizer([r["solution"][:50000] for r in rows], vocab_size=1000)
    model = tiny_qwen2(tok, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, intermediate_size=688)
    return corpus, d / "sel", str(save_tiny(d / "model", model, tok)), src.name


def bench_mode(mode: str, corpus: Path, sel: Path, model_dir: str, out: Path, args) -> dict:
    from transformers import TrainerCallback

    from segsft.finetune.stage import run

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_train_end(self, *a, **k):
            self.seconds = time.perf_counter() - self.t0

    import segsft  # noqa: F401  (registers the config schemas)
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(REPO / "segsft" / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage=finetune", f"data.path={corpus}", f"model.name_or_path={model_dir}", f"selection_dir={sel}",
            f"finetune_dir={out}", f"finetune.mode={mode}", "finetune.deepspeed=none", f"finetune.max_steps={args.steps}",
            f"finetune.max_length={args.max_length}", f"finetune.per_device_train_batch_size={args.batch}",
            "finetune.save_steps=1000000", f"finetune.logging_steps={args.steps}"])
    clock = Clock()
    res = run(cfg, [clock])
    report = json.loads((out / "data_report.json").read_text())
    epochs = args.steps * args.batch / report["kept"]
    tokens = report["tokens"] * epochs
    hist = json.loads(res.loss_history.read_text())
    return {
        "mode": mode,
        "examples": report["kept"],
        "tokens_per_example": report["tokens"] / report["kept"],
        "learned_share": report["learned_share"],
        "steps": args.steps,
        "seconds": clock.seconds,
        "tokens_per_s": tokens / clock.seconds,
        "learned_tokens_per_s": tokens * report["learned_share"] / clock.seconds,
        "first_loss": hist["first_loss"],
        "last_loss": hist["last_loss"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--steps", type=int, default=8, help="with --batch, whole epochs of --samples")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="runs per mode, interleaved; the fastest counts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "finetune_bench.json"))
    args = p.parse_args()
    if (args.steps * args.batch) % args.samples:
        p.error("--steps x --batch must be a multiple of --samples (whole epochs)")
    os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count()))
    import torch

    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        corpus, sel, model_dir, source = write_inputs(d, args.samples, args.seed)
        runs = [bench_mode(m, corpus, sel, model_dir, d / f"{m}-{i}", args)
                for i in range(args.repeats) for m in ("full", "selected")]
        # Interleaved repeats, fastest kept: a busy machine slows single runs, never speeds them up.
        rows = [{**min((r for r in runs if r["mode"] == m), key=lambda r: r["seconds"]),
                 "all_seconds": [round(r["seconds"], 2) for r in runs if r["mode"] == m]} for m in ("full", "selected")]
    device = f"cuda ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "cpu"
    result = {
        "machine": machine(),
        "device": device,
        "setup": {"data": source, "samples": args.samples, "max_length": args.max_length, "batch": args.batch,
                  "steps": args.steps, "model": "Qwen2 hidden 256, 4 layers, vocab 1000 (tiny, random init)",
                  "selected_mask": "each segment p=0.5 plus segments 0, -2, -1", "deepspeed": "none", "processes": 1},
        "repeats": args.repeats,
        "results": rows,
    }
    print(f"\nfinetune bench on {device}; {result['machine']['nproc']} CPUs ({result['machine']['cpu']}), "
          f"{result['machine']['memory_gib']} GiB; {args.samples} x {args.max_length} tokens, batch {args.batch}")
    print(f"{'mode':<9} {'tokens/s':>10} {'loss-tokens/s':>14} {'loss share':>11} {'s/step':>8} {'loss first->last':>18}")
    for r in rows:
        print(f"{r['mode']:<9} {r['tokens_per_s']:>10.0f} {r['learned_tokens_per_s']:>14.0f} {r['learned_share']:>10.1%} "
              f"{r['seconds'] / r['steps']:>8.3f} {r['first_loss']:>8.3f} -> {r['last_loss']:.3f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
