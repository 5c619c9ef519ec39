"""Selection end to end on a synthetic attribution table of 10M segment rows (not a test).

Builds 200,000 samples x 50 segments as 8 complete parts (world size 8, markers included;
`token_attr` lists are empty: selection never reads them), then runs
`python pipeline.py stage=select` once per method in a fresh subprocess, timing it from
process start to masks.parquet written and reading the child's peak RSS (wait4).
Target: under 60 s and under 4 GiB for the attribution rule on a 2-core machine.

    .venv/bin/python bench/select_bench.py [--samples 200000 --segments 50 --parts 8 --keep DIR]
"""

from __future__ import annotations

import argparse
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

from machine import machine as _machine  # noqa: E402

from segsft.store.layout import RunLayout  # noqa: E402
from segsft.select.synthetic import random_tables, write_part  # noqa: E402

TARGET_S, TARGET_GIB = 60.0, 4.0


def machine() -> dict:
    return _machine("polars", "pyarrow")


def build(run_dir: Path, samples: int, segments: int, parts: int) -> float:
    t0 = time.monotonic()
    per = -(-samples // parts)
    for rank in range(parts):
        first, n = rank * per, min(per, samples - rank * per)
        seg, smp = random_tables(n, segments, seed=0, first=first)
        write_part(RunLayout(run_dir).attribution.dir, seg, smp, rank, parts)
    return time.monotonic() - t0


def run_select(run_dir: Path, method: str) -> dict:
    cmd = [sys.executable, "pipeline.py", "stage=select", f"run_dir={run_dir}", f"select.method={method}",
           "hydra.run.dir=" + str(run_dir / "logs" / method)]
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env={**os.environ, "POLARS_MAX_THREADS": str(os.cpu_count())})
    stderr = p.stderr.read()
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"select ({method}) failed:\n{stderr.decode()[-3000:]}")
    out = next(s for s in RunLayout(run_dir).selections() if s.dir.name.startswith(f"{method}-"))
    summary = json.loads(out.summary.read_text())
    return {"method": method, "wall_s": round(wall, 2), "stage_s": summary["seconds"],
            "peak_rss_gib": round(usage.ru_maxrss / 2**20, 3), "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "rows": summary["overall"]["segments"], "share_tokens_kept": round(summary["overall"]["share_tokens_kept"], 4),
            "masks_mib": round(out.masks.stat().st_size / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--segments", type=int, default=50)
    ap.add_argument("--parts", type=int, default=8)
    ap.add_argument("--methods", default="attribution,random,full")
    ap.add_argument("--keep", help="build the run here and keep it (default: a temporary directory)")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "select_bench.json"))
    args = ap.parse_args()

    run_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="select-bench-")) / "run"
    try:
        if not RunLayout(run_dir).attribution.dir.is_dir():
            print(f"building {args.samples} x {args.segments} segment rows in {run_dir} ...", flush=True)
            build_s = build(run_dir, args.samples, args.segments, args.parts)
            os.sync()  # flush the build's writes so they do not stall the first timed run's fsync
        else:
            build_s = None
        shutil.rmtree(RunLayout(run_dir).selection_root, ignore_errors=True)
        results = [run_select(run_dir, m) for m in args.methods.split(",")]
    finally:
        if not args.keep:
            shutil.rmtree(run_dir.parent, ignore_errors=True)

    head = f"{'method':<12} {'rows':>10} {'wall s':>8} {'stage s':>8} {'cpu s':>7} {'peak GiB':>9} {'tokens kept':>12}"
    print(head)
    for r in results:
        print(f"{r['method']:<12} {r['rows']:>10,} {r['wall_s']:>8.2f} {r['stage_s']:>8.2f} {r['cpu_s']:>7.1f} "
              f"{r['peak_rss_gib']:>9.2f} {r['share_tokens_kept']:>12.3f}")
    rule = next((r for r in results if r["method"] == "attribution"), None)
    report = {
        "what": "python pipeline.py stage=select on a synthetic attribution table; wall_s from process start "
                "to masks.parquet + summaries written; peak_rss_gib of that process (wait4 ru_maxrss)",
        "machine": machine(),
        "table": {"samples": args.samples, "segments_per_sample": args.segments, "rows": args.samples * args.segments,
                  "parts": args.parts, "build_s": None if build_s is None else round(build_s, 1)},
        "targets": {"wall_s": TARGET_S, "peak_rss_gib": TARGET_GIB},
        "meets_targets": None if rule is None else rule["wall_s"] < TARGET_S and rule["peak_rss_gib"] < TARGET_GIB,
        "results": results,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
