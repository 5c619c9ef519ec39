"""Each rank's vLLM engine on its own GPU: the check behind tests/test_vllm_devices.py's gpu test.

    python3 bench/vllm_ranks.py [--ranks 2] [--no-engine] [--out FILE.json]

Starts one process per rank as torchrun would (LOCAL_RANK=RANK=r, WORLD_SIZE=ranks, the
launcher's CUDA_VISIBLE_DEVICES). Each goes through segsft.run.dist.pin_engine_devices (what
VLLMEngine calls before vLLM starts), and where vllm is importable builds a VLLMEngine on a tiny
Qwen2 and generates; then reports its GPU's UUID as torch sees it. This process checks:
- rank r's GPU is entry r of its own device list (same UUID), and the ranks' GPUs differ;
- each rank sees exactly one GPU;
- with the engines up, each rank's GPU holds an engine's memory (gpu_memory_utilization of it),
  which a second engine stacked on GPU 0 would not give.
With one GPU: rank 0 is checked on it, and LOCAL_RANK=1 must be refused in one line (exit 2).
Prints one line per check and writes JSON; exit 1 when a check fails, 0 otherwise (a
check that cannot run here is listed as skipped, with why).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # tiny_model

UTIL = 0.3  # each engine's share of its GPU: far above what the tiny model needs, so it shows


def gpu_uuid(index: int) -> str:
    import torch

    props = torch.cuda.get_device_properties(index)
    return str(getattr(props, "uuid", "") or getattr(props, "pci_bus_id", "") or props.name)


def child(model_dir: str | None) -> None:
    """One rank: the product's device choice, the engine if asked, then what torch sees."""
    report: dict[str, Any] = {"local_rank": os.environ.get("LOCAL_RANK"), "launcher": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if model_dir:
        from segsft.config_schema import ModelConf
        from segsft.run.generation import VLLMEngine
        from segsft.store.corpus import ProblemRow

        settings = SimpleNamespace(dtype="auto", seed=0, tensor_parallel_size=1, gpu_memory_utilization=UTIL,
                                   temperature=0.0, top_p=1.0, max_new_tokens=8)
        eng = VLLMEngine(ModelConf(name_or_path=model_dir), settings, llm_kwargs={"enforce_eager": True})
        report["pinned"] = eng.devices
        done = [c for batch in eng.generate([ProblemRow("p0", "What is 2 + 3?", "5", None, 0)], 1) for c in batch]
        report["generated_tokens"] = sum(c.tokens for c in done)
    else:
        from segsft.run.dist import pin_engine_devices

        report["pinned"] = pin_engine_devices(1)
    import torch

    report.update(visible=os.environ.get("CUDA_VISIBLE_DEVICES"), device_count=torch.cuda.device_count(),
                  current_device=torch.cuda.current_device(), uuid=gpu_uuid(0))
    print("REPORT " + json.dumps(report), flush=True)
    sys.stdin.readline()  # hold the engine until the parent has measured every GPU


def build_model(root: Path) -> str:
    from tiny_model import save_tiny, tiny_qwen2, train_tokenizer

    tok = train_tokenizer(["What is 2 + 3? Please reason step by step.", "The answer is \\boxed{5}."] * 50,
                          vocab_size=400)
    # head_dim 64: a size every vLLM attention backend takes.
    model = tiny_qwen2(tok, hidden_size=128, num_attention_heads=2, num_key_value_heads=1, intermediate_size=256)
    return str(save_tiny(root / "model", model, tok))


def start(rank: int, world: int, model_dir: str | None, log_dir: Path) -> subprocess.Popen:
    from segsft.run.dist import launcher_visible_devices

    env = {**os.environ, "LOCAL_RANK": str(rank), "RANK": str(rank), "WORLD_SIZE": str(world),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    visible = launcher_visible_devices()  # not a list this process (a pytest run) narrowed for its own engine
    env.pop("CUDA_VISIBLE_DEVICES", None)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    cmd = [sys.executable, __file__, "--child"] + (["--model", model_dir] if model_dir else [])
    # stderr to a file: vLLM logs a lot while starting, and an unread pipe would block the rank.
    err = open(log_dir / f"rank{rank}.err", "w")
    return subprocess.Popen(cmd, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True)


def read_report(proc: subprocess.Popen, timeout: float) -> dict | None:
    """The child's REPORT line, or None when it exits or times out first."""
    found: list[dict] = []

    def scan() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith("REPORT "):
                found.append(json.loads(line[7:]))
                return

    t = threading.Thread(target=scan, daemon=True)
    t.start()
    t.join(timeout)
    return found[0] if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--no-engine", action="store_true", help="check the device choice only")
    ap.add_argument("--timeout", type=float, default=420, help="seconds for every rank to report")
    ap.add_argument("--out")
    args = ap.parse_args()
    if args.child:
        child(args.model)
        return 0
    import torch

    checks: list[dict] = []

    def check(name: str, ok: bool | None, detail: Any = "") -> None:
        checks.append({"check": name, "ok": ok, "detail": detail})
        print(f"{'PASS' if ok else 'SKIP' if ok is None else 'FAIL'}  {name}  {detail}", flush=True)

    n = torch.cuda.device_count()
    engine = not args.no_engine and importlib.util.find_spec("vllm") is not None
    if n == 0:
        check("ranks on their own GPUs", None, "no CUDA device")
    else:
        ranks = max(1, min(args.ranks, n))
        uuids = [gpu_uuid(i) for i in range(n)]  # this process's view: entry i of the launcher's list
        if not engine:
            check("engines start and generate", None, "--no-engine" if args.no_engine else "vllm is not importable")
        with tempfile.TemporaryDirectory() as d:
            model_dir = build_model(Path(d)) if engine else None
            before = [torch.cuda.mem_get_info(i) for i in range(ranks)]
            procs = [start(r, ranks, model_dir, Path(d)) for r in range(ranks)]
            t0 = time.monotonic()
            reports = [read_report(p, max(1.0, args.timeout - (time.monotonic() - t0))) for p in procs]
            during = [torch.cuda.mem_get_info(i) for i in range(ranks)]
            for p in procs:
                try:
                    p.communicate("\n", timeout=120)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
            errs = [(Path(d) / f"rank{r}.err").read_text(errors="replace") for r in range(ranks)]
        for r, rep in enumerate(reports):
            if rep is None:
                tail = " | ".join(errs[r].strip().splitlines()[-3:])
                check(f"rank {r} reports", False, f"exit {procs[r].returncode}: {tail}")
                continue
            check(f"rank {r} is on entry {r} of the launcher's GPUs", rep["uuid"] == uuids[r],
                  f"{rep['uuid']} (expected {uuids[r]}; CUDA_VISIBLE_DEVICES {rep['launcher']} -> {rep['visible']})")
            check(f"rank {r} sees one GPU", rep["device_count"] == 1 and rep["current_device"] == 0,
                  f"device_count {rep['device_count']}, current {rep['current_device']}")
            if engine:
                taken = (before[r][0] - during[r][0]) / during[r][1]
                check(f"rank {r}'s engine holds its own GPU", taken > UTIL / 2 and rep.get("generated_tokens", 0) > 0,
                      f"{taken:.0%} of GPU {r} taken while up (gpu_memory_utilization {UTIL}), "
                      f"{rep.get('generated_tokens')} tokens generated")
        got = [r["uuid"] for r in reports if r]
        if ranks > 1:
            check("the ranks' GPUs differ", len(got) == ranks and len(set(got)) == ranks, got)
        if n == 1:
            # One GPU: a second rank has none of its own and must say so in one line.
            env = {**os.environ, "LOCAL_RANK": "1", "RANK": "1", "WORLD_SIZE": "2"}
            code = ("import sys; from segsft.run.dist import pin_engine_devices\n"
                    "from segsft.errors import PipelineError\n"
                    "try: pin_engine_devices(1)\nexcept PipelineError as e: print(e); sys.exit(2)")
            p = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": str(REPO)}, capture_output=True,
                               text=True, timeout=120)
            line = p.stdout.strip()
            check("LOCAL_RANK=1 on one GPU is refused in one line", p.returncode == 2 and "LOCAL_RANK=1" in line
                  and "\n" not in line, line or p.stderr.strip()[-300:])
    failed = [c for c in checks if c["ok"] is False]
    if args.out:
        from machine import machine  # bench/machine.py

        Path(args.out).write_text(json.dumps({"what": "each rank's vLLM engine on its own GPU (bench/vllm_ranks.py)",
                                              "machine": machine("torch"), "date": time.strftime("%Y-%m-%d"),
                                              "checks": checks, "passed": not failed}, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
