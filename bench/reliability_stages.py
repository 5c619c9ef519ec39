"""The reliability campaign beyond attribution: select, finetune, evaluate and generate killed
(SIGKILL) or interrupted (SIGINT) at random points, then rerun with the same command.

After each case: the rerun exits 0; every row is accounted for exactly once (each sample's
segments once in the masks; each corpus row once in the data report; each problem and sample
once in the generations; each problem once in corpus or rejects); the results equal an
uninterrupted run; and between the kill and the rerun nothing half-written is offered to the
next stage (a selection without its marker is refused by finetune's reader, `model/` is whole
or absent, no results table from part of the chunks). An interrupt must end in one line,
exit 130. Used by bench/reliability.py (`--stages`).
"""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import polars as pl

REPO = Path(__file__).resolve().parents[1]
INTERRUPTED = "interrupted: rerun the same command to resume"


def _env() -> dict:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def _cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "pipeline.py"), *args]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(*args), cwd=REPO, capture_output=True, text=True, timeout=900, env=_env())


def _last_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _interrupt(args: list[str], how: str, ready: Callable[[], bool] | None, rnd: random.Random, span: float) -> dict:
    """Start the command, stop it with `how` (kill | int) once `ready()` (waiting up to twice
    `span` s), or, without `ready`, after a random time within `span` s; return what the stop
    left (code, last stderr line, traceback seen)."""
    proc = subprocess.Popen(_cmd(*args), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    # Not before 1.2 s: a SIGINT while the interpreter itself starts is Python's, not ours.
    t_min = 1.2 if how == "int" else 0.3
    deadline = time.time() + (2 * span if ready else max(t_min, rnd.uniform(t_min, span)))
    ready = ready or (lambda: False)
    time.sleep(t_min)
    while time.time() < deadline and proc.poll() is None and not ready():
        time.sleep(0.005)
    finished_first = proc.poll() is not None
    proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    return {"code": proc.returncode, "last": _last_line(err), "traceback": "Traceback" in err,
            "finished_first": finished_first}


def _interrupt_problems(stop: dict, how: str) -> list[str]:
    """An interrupt (not a kill) must end in our one line, exit 130, unless the run had finished."""
    if how != "int" or stop["finished_first"] or stop["code"] == 0:
        return []
    bad = []
    if stop["code"] != 130:
        bad.append(f"Ctrl-C: exit {stop['code']}, expected 130")
    if stop["last"] != INTERRUPTED or stop["traceback"]:
        bad.append(f"Ctrl-C: last line {stop['last']!r}{' after a traceback' if stop['traceback'] else ''}")
    return bad


def _stopped(stop: dict, whole: bool) -> str:
    """How the stop found the run, for the record (a case where the run had finished tests less)."""
    if stop["finished_first"]:
        return "the run had finished"
    return f"exit {stop['code']}; output {'whole' if whole else 'unfinished'} after the stop"


# ---- select ------------------------------------------------------------------------------------

def _masks(sel: Path) -> pl.DataFrame:
    return pl.read_parquet(sel / "masks.parquet").sort("sample_id", "segment")


def select_cases(ctx: dict, trials: int, rnd: random.Random) -> list[dict]:
    from segsft.finetune.masks import MasksError, read_masks
    from segsft.store.layout import RunLayout

    ref_run = ctx["root"] / "ref"
    r = _run(["stage=select", f"run_dir={ref_run}"])
    if r.returncode:
        raise SystemExit(f"the reference select failed:\n{r.stderr[-2000:]}")
    ref_sel = RunLayout(ref_run).selections()[0]
    ref = _masks(ref_sel.dir)
    n_segments = pl.read_parquet(RunLayout(ref_run).attribution.pattern("segments")).height
    t0 = time.monotonic()
    _run(["stage=select", f"run_dir={ref_run}", "selection_dir=" + str(ctx["root"] / "sel-timing")])
    span = time.monotonic() - t0
    out = []
    for i in range(trials):
        how = "int" if i % 3 == 2 else "kill"
        run_dir = ctx["root"] / f"select{i}"
        shutil.copytree(ref_run / "attribution", run_dir / "attribution")
        args = ["stage=select", f"run_dir={run_dir}"]
        if i % 2:  # half the cases stop a rerun that rewrites a finished selection
            _run(args)
        sel = RunLayout(run_dir).selection(ref_sel.dir.name)
        rewrite = sel.marker.exists()
        # A third of the cases stop it inside the write: the masks written (anew), the marker not yet.
        in_write = (lambda: not sel.marker.exists() and sel.masks.exists()) if i % 3 == 0 else None
        stop = _interrupt(args, how, in_write, rnd, span)
        stopped = _stopped(stop, sel.finished())
        bad = _interrupt_problems(stop, how)
        if not sel.finished():
            try:
                read_masks(sel.dir)
                bad.append("finetune's reader took an unfinished selection")
            except MasksError:
                pass
        r = _run(args)
        if r.returncode:
            bad.append(f"rerun exit {r.returncode}: {_last_line(r.stderr)}")
        elif not sel.finished():
            bad.append("the rerun left no completion marker")
        else:
            got = _masks(sel.dir)
            if got.height != n_segments or not got.select("sample_id", "segment").is_unique().all():
                bad.append(f"masks hold {got.height} rows for {n_segments} segments")
            if not got.equals(ref):
                bad.append("masks differ from an uninterrupted select")
        where = "in the write" if i % 3 == 0 else "at random"
        out.append({"case": f"select {how} {where}{' (rewrite)' if rewrite else ''} #{i}", "stage": "select",
                    "held": not bad, "problems": bad, "stopped": stopped})
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


# ---- finetune ---------------------------------------------------------------------------------------

FT_STEPS = 6


def _ft_args(ctx: dict, out: Path) -> list[str]:
    return ["stage=finetune", f"run_dir={ctx['root'] / 'ref'}", f"data.path={ctx['corpus']}",
            f"model.name_or_path={ctx['model']}", f"selection_dir={ctx['selection']}", f"finetune_dir={out}",
            "finetune.deepspeed=none", f"finetune.max_steps={FT_STEPS}", "finetune.save_steps=1",
            "finetune.learning_rate=1e-3", "finetune.warmup_ratio=0.0", "finetune.per_device_train_batch_size=2"]


def _ft_record(out: Path) -> dict:
    hist = json.loads((out / "loss_history.json").read_text())
    return {"losses": {s["step"]: s["loss"] for s in hist["steps"]}, "global_step": hist["global_step"],
            "report": json.loads((out / "data_report.json").read_text()),
            "tokens": pl.read_parquet(out / "train_tokens.parquet").sort("sample_id")}


def _model_whole_or_absent(out: Path) -> list[str]:
    model = out / "model"
    if not model.exists():
        return []
    return [] if (model / "config.json").is_file() and any(model.glob("*.safetensors")) else ["model/ is half-written"]


def finetune_cases(ctx: dict, trials: int, rnd: random.Random) -> list[dict]:
    from segsft.finetune.checkpoints import MARKER

    ctx["selection"] = next((ctx["root"] / "ref" / "selection").iterdir())
    ref_out = ctx["root"] / "ft-ref"
    t0 = time.monotonic()
    r = _run(_ft_args(ctx, ref_out))
    if r.returncode:
        raise SystemExit(f"the reference finetune failed:\n{r.stderr[-3000:]}")
    span, ref = time.monotonic() - t0, _ft_record(ref_out)
    rows = ref["report"]["corpus_rows"]
    out = []
    for i in range(trials):
        how = "int" if i % 3 == 2 else "kill"
        ft = ctx["root"] / f"ft{i}"
        target = rnd.randint(1, FT_STEPS - 1)

        def saving(ft: Path = ft, target: int = target) -> bool:
            # A checkpoint directory without its marker yet: the save is in progress.
            d = ft / f"checkpoint-{target}"
            return d.is_dir() and (how == "int" or not (d / MARKER).exists())

        stop = _interrupt(_ft_args(ctx, ft), how, saving if i % 2 == 0 else None, rnd, span)
        stopped = _stopped(stop, (ft / "model").is_dir())
        bad = _interrupt_problems(stop, how) + _model_whole_or_absent(ft)
        r = _run(_ft_args(ctx, ft))
        if r.returncode:
            bad.append(f"rerun exit {r.returncode}: {_last_line(r.stderr)}")
        else:
            got = _ft_record(ft)
            if got["global_step"] != FT_STEPS:
                bad.append(f"global_step {got['global_step']} != {FT_STEPS}")
            kept = got["report"]["kept"] + sum(got["report"]["dropped"].values())
            if kept != rows:
                bad.append(f"data report accounts for {kept} of {rows} corpus rows")
            if not got["tokens"].equals(ref["tokens"]):
                bad.append("train_tokens differ from an uninterrupted run")
            diff = max((abs(got["losses"][s] - ref["losses"][s]) for s in got["losses"] if s in ref["losses"]), default=0)
            if diff > 1e-4:
                bad.append(f"losses differ from an uninterrupted run by {diff:.2e}")
            bad += _model_whole_or_absent(ft)
        out.append({"case": f"finetune {how} {'in a save' if i % 2 == 0 else 'at random'} #{i}", "stage": "finetune",
                    "held": not bad, "problems": bad, "stopped": stopped})
        shutil.rmtree(ft, ignore_errors=True)
    return out


# ---- evaluate and generate -----------------------------------------------------------------------

def _gen_args(stage: str, ctx: dict, out: Path) -> list[str]:
    node = "evaluate" if stage == "evaluate" else "generate"
    common = [f"stage={stage}", f"run_dir={out}", f"model.name_or_path={ctx['model']}", f"{node}.engine=hf",
              f"{node}.max_new_tokens=8", f"{node}.samples=2", f"{node}.chunk_problems=1", f"{node}.batch_size=1"]
    if stage == "evaluate":
        return [*common, "evaluate.benchmarks=[tiny]", f"evaluate.models=[{ctx['model']}]"]
    return [*common, f"generate.problems={REPO / 'segsft' / 'data' / 'benchmarks' / 'tiny.jsonl'}"]


def _gens(d: Path) -> pl.DataFrame:
    return pl.read_parquet(d / "generations-*.parquet").sort("problem_id", "sample")


def _gen_record(stage: str, out: Path) -> dict:
    d = out / ("eval" if stage == "evaluate" else "generated")
    rec: dict[str, Any] = {"gens": _gens(d)}
    if stage == "evaluate":
        rec["results"] = pl.read_parquet(d / "results.parquet").drop("model")
    else:
        corpus = [json.loads(x)["id"] for x in (d / "corpus.jsonl").read_text().splitlines() if x.strip()]
        rec["accounted"] = sorted([*corpus, *pl.read_parquet(d / "rejects.parquet")["sample_id"].to_list()])
        rec["corpus"] = (d / "corpus.jsonl").read_text()
    return rec


def generation_cases(stage: str, ctx: dict, trials: int, rnd: random.Random) -> list[dict]:
    ref_out = ctx["root"] / f"{stage}-ref"
    t0 = time.monotonic()
    r = _run(_gen_args(stage, ctx, ref_out))
    if r.returncode:
        raise SystemExit(f"the reference {stage} failed:\n{r.stderr[-3000:]}")
    span, ref = time.monotonic() - t0, _gen_record(stage, ref_out)
    problems = 10
    out = []
    for i in range(trials):
        how = "int" if i % 3 == 2 else "kill"
        run_dir = ctx["root"] / f"{stage}{i}"
        d = run_dir / ("eval" if stage == "evaluate" else "generated")
        want = rnd.randint(1, problems - 1)
        stop = _interrupt(_gen_args(stage, ctx, run_dir), how,
                          lambda: len(list(d.glob("generations-*.parquet"))) >= want, rnd, span)
        bad = _interrupt_problems(stop, how)
        chunks = len(list(d.glob("generations-*.parquet")))
        stopped = _stopped(stop, False) + f", {chunks} chunk(s) on disk"
        if not stop["finished_first"] and chunks < problems and ((d / "results.parquet").exists() or (d / "corpus.jsonl").exists()):
            bad.append("a results table or corpus was written from part of the chunks")
        r = _run(_gen_args(stage, ctx, run_dir))
        if r.returncode:
            bad.append(f"rerun exit {r.returncode}: {_last_line(r.stderr)}")
        else:
            got = _gen_record(stage, run_dir)
            g = got["gens"]
            if g.height != 2 * problems or not g.select("problem_id", "sample").is_unique().all():
                bad.append(f"{g.height} generations for {problems} problems x 2 samples")
            if not g.select("problem_id", "sample", "output").equals(ref["gens"].select("problem_id", "sample", "output")):
                bad.append("generations differ from an uninterrupted run")
            if stage == "evaluate" and not got["results"].equals(ref["results"]):
                bad.append("results differ from an uninterrupted run")
            if stage == "generate":
                if got["accounted"] != sorted(set(got["accounted"])) or len(got["accounted"]) != problems:
                    bad.append(f"corpus + rejects account for {len(got['accounted'])} of {problems} problems")
                if got["corpus"] != ref["corpus"]:
                    bad.append("the corpus differs from an uninterrupted run")
        out.append({"case": f"{stage} {how} after {chunks} of {problems} chunks #{i}", "stage": stage, "held": not bad,
                    "problems": bad, "stopped": stopped})
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def stage_cases(ctx: dict, trials: int, rnd: random.Random) -> list[dict]:
    """Every non-attribution case; `ctx` from bench/reliability.py's setup (a finished reference run)."""
    out = select_cases(ctx, trials, rnd)
    out += finetune_cases(ctx, max(3, trials // 2), rnd)
    out += generation_cases("evaluate", ctx, max(3, trials // 2), rnd)
    out += generation_cases("generate", ctx, max(3, trials // 3), rnd)
    return out
