"""Reliability campaign: kills, concurrent starts, world-size changes, changed settings, a full disk;
and the store's other writer, evaluate's generation chunks, killed and rerun; then the other stages
(bench/reliability_stages.py: select, finetune, evaluate, generate killed or interrupted, then rerun).

    .venv/bin/python bench/reliability.py [--trials 20] [--eval-trials 5] [--stage-trials 6]
                                          [--only attribute|stages] [--out bench/results/reliability.json]

Runs the real entry point (`python pipeline.py stage=attribute ...`) as subprocesses on the
embedded sample corpus plus four bad rows (40 rows), with a tiny model built on the fly (no
download). After every trial it checks that every input row is in exactly one of the samples
and rejects tables (by source row), that each sample id is read once, and that the scores equal
an uninterrupted reference run, and that the glob users type (`attribution/samples-*.parquet`)
sees each sample once. Evaluate runs (one problem per chunk) are killed at random points and
rerun: every generated row must be in the chunk files once and the generations and results
equal an uninterrupted run. Prints cases tried / held and writes JSON with the machine named.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))  # the test yardsticks: tiny_model, reference

from machine import machine as _machine  # noqa: E402

import polars as pl  # noqa: E402

from segsft.store.attribution_tables import open_attribution  # noqa: E402
from segsft.store.layout import GenerationLayout, RunLayout  # noqa: E402

BAD_ROWS = ['{"id": "broken", ', '{"id": "noanswer", "question": "q", "solution": "s"}',
            json.dumps({"id": "sample-000", "question": "q", "solution": "\n\nWait, a duplicate id.", "answer": "1"}),
            json.dumps({"id": "nan", "question": "q", "solution": "s", "answer": float("nan")})]


def env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO), **extra}


def attribute_cmd(run_dir: Path, corpus: Path, model: str, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "pipeline.py"), "stage=attribute", f"run_dir={run_dir}", f"data.path={corpus}",
            f"model.name_or_path={model}", "attribute.rule=gauss_legendre", "attribute.steps=4",
            "attribute.flush_every=1", "attribute.device=cpu", *extra]


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, env=kw.pop("env", env()), **kw)


def tables(run_dir: Path) -> dict:
    """What selection reads (each sample once), sorted; rows of samples and rejects."""
    t = open_attribution(run_dir)
    smp = t.scan_samples(("sample_id", "row"), ()).collect().sort("sample_id")
    rej = t.scan_rejects(("sample_id", "row")).collect().sort("sample_id")
    seg = t.scan_segments(("sample_id", "segment", "attr_sum")).collect().sort("sample_id", "segment")
    return {"samples": smp, "rejects": rej, "segments": seg}


def problems(run_dir: Path, n_rows: int, ref: dict | None) -> list[str]:
    """Every way the run dir could be wrong: rows lost or doubled, ids twice, scores changed."""
    try:
        got = tables(run_dir)
    except Exception as e:  # noqa: BLE001 - any failure to read is a finding
        return [f"unreadable: {str(e).splitlines()[0]}"]
    out = []
    rows = sorted([*got["samples"]["row"].to_list(), *got["rejects"]["row"].to_list()])
    if rows != list(range(n_rows)):
        out.append(f"rows accounted {len(rows)} (unique {len(set(rows))}) != {n_rows}")
    ids = [*got["samples"]["sample_id"], *got["rejects"]["sample_id"]]
    if len(ids) != len(set(ids)):
        out.append("an id is in the tables twice")
    globbed = pl.read_parquet(RunLayout(run_dir).attribution.pattern("samples"))["sample_id"]
    if globbed.len() != globbed.n_unique():
        out.append(f"the glob samples-*.parquet sees {globbed.len() - globbed.n_unique()} sample(s) twice")
    if ref is not None:
        for k in ("samples", "rejects"):
            if not got[k].equals(ref[k]):
                out.append(f"{k} differ from the reference run")
        a, b = got["segments"], ref["segments"]
        if a.select("sample_id", "segment").rows() != b.select("sample_id", "segment").rows():
            out.append("segments differ from the reference run")
        elif max((abs(x - y) for x, y in zip(a["attr_sum"], b["attr_sum"])), default=0.0) > 1e-4:
            out.append("scores differ from the reference run")
    return out


def wait_for_chunks(partial: Path, proc: subprocess.Popen, n: int, deadline: float) -> None:
    while time.time() < deadline and proc.poll() is None and len(list(partial.glob("samples-*.parquet"))) < n:
        time.sleep(0.005)


def case_kills(ctx: dict, trials: int, rnd: random.Random) -> list[dict]:
    """Kill at a random point (while loading, mid-chunks, while finishing), then rerun."""
    out = []
    for i in range(trials):
        run_dir = ctx["root"] / f"kill{i}"
        proc = subprocess.Popen(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]), cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        when = rnd.choice(["time", "chunks"])
        if when == "time":
            time.sleep(rnd.uniform(0.5, ctx["full_s"]))
        else:
            wait_for_chunks(RunLayout(run_dir).attribution.partial("00000-of-00001"), proc, rnd.randint(1, 36),
                            time.time() + 120)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]))
        bad = [] if r.returncode == 0 else [f"rerun exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"]
        bad += problems(run_dir, ctx["n_rows"], ctx["ref"])
        out.append({"case": f"kill {when} #{i}", "held": not bad, "problems": bad})
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def case_concurrent(ctx: dict) -> dict:
    """Two starts on one run dir: one runs, the other refuses naming the holder; nothing lost."""
    run_dir = ctx["root"] / "concurrent"
    cmd = attribute_cmd(run_dir, ctx["corpus"], ctx["model"])
    a = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    b = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ra, rb = a.communicate(timeout=600), b.communicate(timeout=600)
    codes = sorted([a.returncode, b.returncode])
    refusal = (ra[1] if a.returncode else rb[1]).strip().splitlines()[-1:] if any(codes) else []
    bad = [] if codes == [0, 2] else [f"exit codes {codes}, expected one 0 and one 2"]
    if codes == [0, 2] and not (refusal and "PID" in refusal[0] and "host" in refusal[0] and "Traceback" not in ra[1] + rb[1]):
        bad.append(f"the refusal does not name the holder in one line: {refusal}")
    bad += problems(run_dir, ctx["n_rows"], ctx["ref"])
    return {"case": "two concurrent starts", "held": not bad, "problems": bad}


def case_world_sizes(ctx: dict) -> list[dict]:
    """Rank 0 of 2 finishes, rank 1 never runs; a 1-process rerun completes the run; select
    reads every sample once; consolidation makes one part with the same content."""
    run_dir = ctx["root"] / "worlds"
    out = []
    r0 = run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]), env=env(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0"))
    r1 = run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]))
    bad = [f"exit {r0.returncode}/{r1.returncode}"] if r0.returncode or r1.returncode else []
    bad += problems(run_dir, ctx["n_rows"], ctx["ref"])
    sel = run([sys.executable, str(REPO / "pipeline.py"), "stage=select", f"run_dir={run_dir}"])
    if sel.returncode:
        bad.append(f"select after a world-size change: exit {sel.returncode}: {sel.stderr.strip().splitlines()[-1:]}")
    out.append({"case": "world size 2 (rank 1 lost) then 1", "held": not bad, "problems": bad})
    rc = run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"], "attribute.consolidate=true"))
    parts = RunLayout(run_dir).attribution.finished_parts()
    bad = [f"exit {rc.returncode}"] if rc.returncode else []
    bad += [] if parts == ["00000-of-00001"] else [f"parts after consolidation: {parts}"]
    bad += problems(run_dir, ctx["n_rows"], ctx["ref"])
    out.append({"case": "consolidate parts of two world sizes", "held": not bad, "problems": bad})
    return out


def case_settings(ctx: dict) -> dict:
    """A killed run rerun with another rule, or a finished one with another corpus: refused, nothing mixed."""
    run_dir = ctx["root"] / "settings"
    proc = subprocess.Popen(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]), cwd=REPO, env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_chunks(RunLayout(run_dir).attribution.partial("00000-of-00001"), proc, 5, time.time() + 120)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    other = run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"], "attribute.rule=linspace", "attribute.steps=8"))
    bad = [] if other.returncode == 2 and "rule:" in other.stderr and "Traceback" not in other.stderr else [
        f"another rule on a killed run: exit {other.returncode}"]
    run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]))
    corpus2 = ctx["root"] / "other.jsonl"
    corpus2.write_text(ctx["corpus"].read_text() + json.dumps({"id": "x", "question": "q", "solution": "s", "answer": "2"}) + "\n")
    c2 = run(attribute_cmd(run_dir, corpus2, ctx["model"]))
    if not (c2.returncode == 2 and "corpus_sha256" in c2.stderr):
        bad.append(f"another corpus on a finished run: exit {c2.returncode}")
    bad += problems(run_dir, ctx["n_rows"], ctx["ref"])
    return {"case": "changed settings or corpus on a run dir", "held": not bad, "problems": bad}


def case_disk_full(ctx: dict) -> dict:
    """Attribution into a small tmpfs that fills up: one line, exit 2; after freeing space the
    rerun finishes with every row once."""
    mnt = Path(f"/tmp/segsft-rel-{uuid.uuid4().hex[:8]}")
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        mnt.rmdir()
        return {"case": "disk full (tmpfs)", "held": None, "problems": ["skipped: cannot mount a tmpfs here (needs root)"]}
    try:
        run_dir = mnt / "run"
        filler = mnt / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        os.truncate(filler, max(0, os.path.getsize(filler) - 40 * 4096))  # room for logs and a few chunks
        r = run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]))
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("error:")]
        bad = [] if r.returncode == 2 and "Traceback" not in r.stderr and lines and "disk is full" in lines[-1] else [
            f"full disk: exit {r.returncode}, {r.stderr.strip().splitlines()[-1:]}"]
        filler.unlink()
        r = run(attribute_cmd(run_dir, ctx["corpus"], ctx["model"]))
        if r.returncode:
            bad.append(f"rerun after freeing space: exit {r.returncode}")
        bad += problems(run_dir, ctx["n_rows"], ctx["ref"])
        return {"case": "disk full (tmpfs), then room", "held": not bad, "problems": bad}
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        mnt.rmdir()


GEN_KEY = ["model", "benchmark", "problem_id", "sample"]


def evaluate_cmd(run_dir: Path, model: str) -> list[str]:
    # One problem per chunk and per batch: a kill can fall between any two chunks.
    return [sys.executable, str(REPO / "pipeline.py"), "stage=evaluate", f"run_dir={run_dir}", f"model.name_or_path={model}",
            f"evaluate.models=[{model}]", "evaluate.engine=hf", "evaluate.benchmarks=[tiny]", "evaluate.samples=2",
            "evaluate.max_new_tokens=8", "evaluate.chunk_problems=1", "evaluate.batch_size=1", "evaluate.bootstrap=20"]


def generation_rows(run_dir: Path) -> pl.DataFrame | None:
    """Every row of every chunk file, as written (not deduplicated), sorted by key."""
    paths = GenerationLayout(run_dir / "eval").chunks()
    return pl.concat([pl.read_parquet(p) for p in paths], how="vertical_relaxed").sort(GEN_KEY) if paths else None


def case_evaluate_kills(ctx: dict, trials: int, rnd: random.Random) -> list[dict]:
    """Kill stage=evaluate at a random point (by time or after some chunks), then rerun."""
    ref_dir = ctx["root"] / "eval-ref"
    t0 = time.monotonic()
    r = run(evaluate_cmd(ref_dir, ctx["model"]))
    full_s = time.monotonic() - t0
    if r.returncode:
        return [{"case": "evaluate reference", "held": False, "problems": [f"exit {r.returncode}: {r.stderr[-300:]}"]}]
    ref, ref_results = generation_rows(ref_dir), pl.read_parquet(ref_dir / "eval" / "results.parquet")
    out = []
    for i in range(trials):
        run_dir = ctx["root"] / f"eval-kill{i}"
        proc = subprocess.Popen(evaluate_cmd(run_dir, ctx["model"]), cwd=REPO, env=env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        when = rnd.choice(["time", "chunks"])
        if when == "time":
            time.sleep(rnd.uniform(0.5, full_s))
        else:
            lay, n, deadline = GenerationLayout(run_dir / "eval"), rnd.randint(1, 4), time.time() + 120
            while time.time() < deadline and proc.poll() is None and len(lay.chunks()) < n:
                time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        r = run(evaluate_cmd(run_dir, ctx["model"]))
        bad = [] if r.returncode == 0 else [f"rerun exit {r.returncode}: {r.stderr.strip().splitlines()[-1:]}"]
        got = generation_rows(run_dir)
        if got is None or not got.select(GEN_KEY).is_unique().all():
            bad.append("a generated row is missing from the chunks or in them twice")
        elif not got.select(*GEN_KEY, "output", "correct").equals(ref.select(*GEN_KEY, "output", "correct")):
            bad.append("generations differ from the uninterrupted run")
        res = run_dir / "eval" / "results.parquet"
        if not res.is_file() or not pl.read_parquet(res).drop("model").equals(ref_results.drop("model")):
            bad.append("results differ from the uninterrupted run")
        out.append({"case": f"evaluate kill {when} #{i}", "held": not bad, "problems": bad})
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def setup(root: Path) -> dict:
    from tiny_model import save_tiny, tiny_qwen2, train_tokenizer

    rows = [json.loads(line) for line in (REPO / "segsft" / "data" / "sample_traces.jsonl").read_text().splitlines() if line.strip()]
    corpus = root / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(b + "\n" for b in BAD_ROWS))
    tok = train_tokenizer([r["solution"] for r in rows] * 3, vocab_size=1000)
    model = str(save_tiny(root / "model", tiny_qwen2(tok), tok))
    ctx = {"root": root, "corpus": corpus, "model": model, "n_rows": len(rows) + len(BAD_ROWS)}
    t0 = time.monotonic()
    r = run(attribute_cmd(root / "ref", corpus, model))
    if r.returncode:
        raise SystemExit(f"the reference run failed:\n{r.stderr[-3000:]}")
    ctx["full_s"] = time.monotonic() - t0
    ctx["ref"] = None
    bad = problems(root / "ref", ctx["n_rows"], None)
    if bad:
        raise SystemExit(f"the reference run itself is wrong: {bad}")
    ctx["ref"] = tables(root / "ref")
    return ctx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="kill trials")
    ap.add_argument("--eval-trials", type=int, default=5, help="kill trials of stage=evaluate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stage-trials", type=int, default=6, help="select trials (finetune, evaluate, generate: fewer)")
    ap.add_argument("--only", choices=("attribute", "stages"), default=None, help="one half of the campaign")
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "reliability.json"))
    args = ap.parse_args()
    rnd = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="segsft-reliability-"))
    t0 = time.monotonic()
    try:
        ctx = setup(root)
        print(f"reference run: {ctx['full_s']:.1f} s for {ctx['n_rows']} rows", flush=True)
        results = []
        if args.only != "stages":
            results += case_kills(ctx, args.trials, rnd)
            results.append(case_concurrent(ctx))
            results += case_world_sizes(ctx)
            results.append(case_settings(ctx))
            results.append(case_disk_full(ctx))
            for r in results:
                r.setdefault("stage", "attribute")
        if args.only != "attribute":
            from reliability_stages import stage_cases

            evaluate = case_evaluate_kills(ctx, args.eval_trials, rnd)
            for r in evaluate:
                r.setdefault("stage", "evaluate")
            results += evaluate
            results += stage_cases(ctx, args.stage_trials, rnd)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    tried = [r for r in results if r["held"] is not None]
    held = [r for r in tried if r["held"]]
    for r in results:
        mark = {True: "held", False: "FAILED", None: "skipped"}[r["held"]]
        print(f"{r['case']:<44} {mark:<8} {'; '.join(r['problems'])}  {r.get('stopped', '')}")
    print(f"\ncases tried {len(tried)}, held {len(held)}  ({time.monotonic() - t0:.0f} s)")
    by_stage = {}
    for r in tried:
        st = by_stage.setdefault(r.get("stage", "attribute"), {"tried": 0, "held": 0})
        st["tried"] += 1
        st["held"] += bool(r["held"])
    report = {"what": "bench/reliability.py: attribution runs killed, started twice, resumed with other world sizes "
                      "and settings, on a full disk; every input row must be in samples or rejects exactly once, the "
                      "glob of the part files must see each sample once and the scores equal an uninterrupted run; "
                      "evaluate runs killed and rerun must hold every generation once and equal an uninterrupted run. "
                      "Then select, finetune (kills in checkpoint saves), evaluate and generate (kills between chunks) "
                      "killed or interrupted (Ctrl-C: one line, exit 130) and rerun: every row once, results equal to "
                      "an uninterrupted run, and nothing half-written offered to the next stage",
              "machine": _machine(), "date": time.strftime("%Y-%m-%d"), "trials": args.trials,
              "eval_trials": args.eval_trials, "stage_trials": args.stage_trials, "only": args.only, "seed": args.seed,
              "tried": len(tried), "held": len(held), "by_stage": by_stage, "cases": results}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    sys.exit(0 if len(held) == len(tried) else 1)


if __name__ == "__main__":
    main()
