"""Issue 22, bad input round 3: every stage, directory key and interrupt ends in one clear line,
and nothing consumes a half-written output. One test (or more) per item of the issue."""

from __future__ import annotations

import gzip
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segsft.config_schema import ModelConf

from conftest import (REPO, compose_config, make_traces, mark_selection_finished, pipeline_env, run_pipeline, write_jsonl,
                      write_masks)
from segsft.errors import PipelineError
from segsft.select.synthetic import segment_rows, write_attribution


def _error_lines(stderr: str) -> list[str]:
    """What the user sees on stderr, less the log lines (they carry a timestamp)."""
    return [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("[20")]


def _synthetic_run(root: Path) -> Path:
    rows = (segment_rows("a", [0.5, 0.3, 0.1, 0.05, 0.05], [0.2, 0.9, 0.5, None, 0.1], [4, 6, 3, 2, 5])
            + segment_rows("b", [0.2, 0.6, 0.2], [0.3, 0.5, 0.7], [10, 1, 2]) + segment_rows("c", [1.0], [0.99], [8]))
    write_attribution(root, rows, world=1)
    return root


# ---- 1. a directory key that names a file ------------------------------------------------------------

@pytest.mark.parametrize("key", ["run_dir", "selection_dir", "finetune_dir", "eval_dir", "generate_dir", "export.dir"])
def test_every_directory_key_naming_a_file_is_one_problem(tmp_path, key):
    from segsft.run.path_keys import path_key_problems

    f = tmp_path / "afile"
    f.write_text("x")
    errs = path_key_problems(compose_config("stage=select", f"run_dir={tmp_path / 'r'}", f"{key}={f}"))
    assert errs == [f"{key}={f} is a file, not a directory: point {key} elsewhere (or move the file)"]
    errs = path_key_problems(compose_config("stage=select", f"run_dir={tmp_path / 'r'}", f"{key}={f}/sub"))
    assert errs == [f"{key}={f}/sub: {f} is a file, not a directory: point {key} elsewhere"]


@pytest.mark.parametrize("key", ["run_dir", "eval_dir"])
def test_an_empty_directory_key_is_one_line_and_writes_nothing_in_the_working_directory(tmp_path, key):
    from conftest import REPO, pipeline_env
    from segsft.evaluate.stage import check_config

    # A stage's own check (the Python API, no Hydra) says it in the same words.
    errs = check_config(compose_config("stage=evaluate", f"run_dir={tmp_path / 'r'}", "eval_dir="))
    assert "eval_dir is empty: set eval_dir=<directory for generations and results>" in errs

    extra = [] if key == "run_dir" else [f"run_dir={tmp_path / 'r'}"]
    out = subprocess.run([sys.executable, str(REPO / "pipeline.py"), "stage=select", *extra, f"{key}= "],
                         cwd=tmp_path, env=pipeline_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    purpose = {"run_dir": "directory of the run (scores, logs)", "eval_dir": "directory for generations and results"}
    assert _error_lines(out.stderr) == [f"error: {key} is empty: set {key}=<{purpose[key]}>"]
    # Hydra's log directory would have been made from the empty key, in the working directory.
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_report_path_under_a_file_is_one_problem(tmp_path):
    from segsft.run.path_keys import path_key_problems

    f = tmp_path / "afile"
    f.write_text("x")
    for path, tail in ((f / "x.html", " (or move the file)"), (f / "a" / "x.html", "")):
        errs = path_key_problems(compose_config("stage=report", f"run_dir={tmp_path / 'r'}", f"report.path={path}"))
        assert errs == [f"report.path={path}: {f} is a file, not a directory: point report.path elsewhere{tail}"]


@pytest.mark.parametrize("key", ["run_dir", "selection_dir"])
def test_a_directory_key_naming_a_file_ends_in_one_line_exit_2(tmp_path, key):
    f = tmp_path / "afile"
    f.write_text("x")
    out = run_pipeline("stage=select", f"run_dir={tmp_path / 'r'}", f"{key}={f}")
    assert out.returncode == 2, out.stderr[-2000:]
    assert _error_lines(out.stderr) == [f"error: {key}={f} is a file, not a directory: point {key} elsewhere (or move the file)"]
    assert f.read_text() == "x"


# ---- 2. one very long prompt; out of memory while generating ----------------------------------------

def test_a_prompt_too_long_for_the_model_is_rejected_and_the_rest_run(tmp_path, tiny_model_dir):
    from segsft.evaluate.stage import run

    bench = write_jsonl(tmp_path / "b.jsonl", [{"id": "p1", "question": "What is 2 + 2?", "answer": "4"},
                                               {"id": "huge", "question": "x " * 100_000, "answer": "1"},
                                               {"id": "p3", "question": "What is 3 + 3?", "answer": "6"}])
    cfg = compose_config("stage=evaluate", f"run_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}",
                         "evaluate.engine=hf", f"evaluate.benchmarks=[{bench}]", "evaluate.max_new_tokens=4",
                         "evaluate.batch_size=3")
    res = pl.read_parquet(run(cfg)).row(0, named=True)
    assert res["n_problems"] == 2  # the two good problems of the same batch were generated and graded
    gens = pl.read_parquet(tmp_path / "eval" / "generations-*.parquet")
    assert sorted(gens["problem_id"]) == ["p1", "p3"]
    rej = pl.read_parquet(tmp_path / "eval" / "rejects.parquet").row(0, named=True)
    assert rej["sample_id"] == "b/huge"
    assert "prompt too long (" in rej["reason"] and "tokens > 65536)" in rej["reason"]  # the tiny model's context


def test_an_explicit_prompt_limit_rejects_with_the_token_count(tiny_model_dir, tokenizer):
    from segsft.store.corpus import ProblemRow
    from segsft.run.generation import split_long_prompts
    from segsft.method.text import encode_prompt

    probs = [ProblemRow("a", "short?", "1", None, 0), ProblemRow("b", "a longer question " * 20, "1", None, 1)]
    limit = len(encode_prompt(tokenizer, "short?")) + 5
    n = len(encode_prompt(tokenizer, probs[1].question))
    ok, rej = split_long_prompts(ModelConf(name_or_path=tiny_model_dir), probs, limit, "generate")
    assert [p.problem_id for p in ok] == ["a"]
    assert [r.sample_id for r in rej] == ["b"] and f"row 1: prompt too long ({n} tokens > {limit})" in rej[0].reason
    assert "generate.max_prompt_tokens" in rej[0].reason


def test_out_of_memory_halves_the_batch_and_gives_up_on_one_row_only(tiny_model_dir):
    from segsft.store.corpus import ProblemRow
    from segsft.run.generation import HFEngine

    settings = compose_config("stage=evaluate").evaluate
    settings.batch_size, settings.max_new_tokens, settings.engine = 4, 3, "hf"
    eng = HFEngine(ModelConf(name_or_path=tiny_model_dir), settings)
    real, calls = eng.model.generate, []

    def generate(**kw):
        n = kw["input_ids"].shape[0]
        calls.append(n)
        # Too big together; alone, every prompt but the longest fits.
        if n > 1 or kw["input_ids"].shape[1] > 60:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 40019202304 bytes")
        return real(**kw)

    eng.model.generate = generate
    probs = [ProblemRow(f"p{i}", "What is 1 + 1?" + " Think." * (10 if i == 0 else 0), "2", None, i) for i in range(4)]
    done = [c for batch in eng.generate(probs, 1) for c in batch]
    assert sorted(c.problem_id for c in done) == ["p1", "p2", "p3"]
    assert [pid for pid, _ in eng.failed] == ["p0"] and "out of memory" in eng.failed[0][1]
    assert calls[0] == 4 and calls[1] == 2  # halved, then halved again


# ---- 3. Ctrl-C --------------------------------------------------------------------------------------

HOLD = """
import sys, time
import segsft.run.stages as stages
def run_stage(cfg):
    print("READY", flush=True)
    time.sleep(60)
stages.run_stage = run_stage
"""


@pytest.mark.parametrize("stage", ["select", "report", "finetune", "evaluate", "generate", "compare"])
def test_ctrl_c_in_any_stage_is_one_line_exit_130(tmp_path, stage):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOLD)  # the stage blocks, as a long one does
    env = {**pipeline_env(), "PYTHONPATH": f"{hook}{os.pathsep}{REPO}"}
    proc = subprocess.Popen([sys.executable, "pipeline.py", f"stage={stage}", f"run_dir={tmp_path / 'r'}"], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert _error_lines(err) == ["interrupted: rerun the same command to resume"] and "Traceback" not in err
    # Once on the console (not again on stdout through the log's console handler); kept in the run's log.
    assert "interrupted" not in out
    (log,) = (tmp_path / "r").rglob("segsft.log")
    assert log.read_text().count("interrupted: rerun the same command to resume") == 1


def test_ctrl_c_during_attribution_is_one_line_and_the_rerun_resumes(tmp_path, tiny_model_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_traces(12, seed=5))
    args = ["stage=attribute", f"run_dir={tmp_path / 'r'}", f"data.path={corpus}", f"model.name_or_path={tiny_model_dir}",
            "attribute.rule=gauss_legendre", "attribute.steps=4", "attribute.flush_every=1", "attribute.device=cpu"]
    proc = subprocess.Popen([sys.executable, "pipeline.py", *args], cwd=REPO, env=pipeline_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    partial = tmp_path / "r" / "attribution" / "_partial" / "00000-of-00001"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(partial.glob("samples-*.parquet"))) < 1 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    # Progress bars of the model load come first; then our line, and no traceback.
    assert _error_lines(err)[-1] == "interrupted: rerun the same command to resume"
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert not (tmp_path / "r" / "attribution" / "part-00000-of-00001.done").exists()
    out = run_pipeline(*args)
    assert out.returncode == 0, out.stderr[-2000:]
    assert pl.read_parquet(tmp_path / "r" / "attribution" / "samples-*.parquet")["sample_id"].n_unique() == 12


# ---- 4. lists and dicts where text is due ----------------------------------------------------------

def test_a_generations_file_with_list_columns_is_refused_naming_the_column(tmp_path):
    from segsft.evaluate.stage import run

    path = tmp_path / "gens.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "answer": [[1.0], [2.0]], "output": ["\\boxed{1}", "\\boxed{2}"]}), path)
    cfg = compose_config("stage=evaluate", f"run_dir={tmp_path}", f"evaluate.generations={path}")
    with pytest.raises(PipelineError, match=r"column 'answer' holds list<element: double>"):
        run(cfg)
    jsonl = write_jsonl(tmp_path / "gens.jsonl", [{"id": "a", "answer": "1", "output": {"a": 1}}])
    with pytest.raises(PipelineError, match=r"row 0: field 'output' is a JSON object, not text"):
        run(compose_config("stage=evaluate", f"run_dir={tmp_path / 'j'}", f"evaluate.generations={jsonl}"))


def test_corpus_and_problem_files_with_nested_values_are_refused(tmp_path):
    from segsft.store.corpus import CorpusError, read_corpus, read_problems

    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["a"], "question": ["q"], "solution": ["s"], "answer": [[1.0]]}), path)
    fields = {"id": "id", "question": "question", "solution": "solution", "answer": "answer"}
    with pytest.raises(CorpusError, match=r"column 'answer' holds list"):
        read_corpus(path, fields)
    with pytest.raises(CorpusError, match=r"evaluate.benchmarks=.*column 'answer' holds list"):
        read_problems(path, fields, key="evaluate.benchmarks")
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "q", "answer": [1]},
                                               {"id": "b", "question": "q", "answer": "2"}])
    ok, rej = read_problems(probs, fields)
    assert [p.problem_id for p in ok] == ["b"] and "field 'answer' is a list, not text" in rej[0].reason


# ---- 5. a half-written selection --------------------------------------------------------------------

def test_select_writes_its_marker_last_and_every_reader_refuses_a_selection_without_it(tmp_path, monkeypatch):
    import segsft.select.stage as select_stage
    from segsft.finetune import check_config as finetune_check
    from segsft.finetune.masks import MasksError, read_masks
    from segsft.store.layout import RunLayout
    from segsft.report.load import ReportError, find_selections, read_selection

    run_dir = _synthetic_run(tmp_path / "r")
    cfg = compose_config("stage=select", f"run_dir={run_dir}")
    select_stage.run(cfg)
    sel = RunLayout(run_dir).selection(Path(cfg.selection_dir))
    assert sel.finished() and sel.marker.is_file()

    # A select interrupted after the masks, both summaries and config.yaml, before the marker.
    def interrupted(path, obj):
        if Path(path) == sel.marker:
            raise KeyboardInterrupt
        return real_write_json(path, obj)

    real_write_json = select_stage.write_json
    monkeypatch.setattr(select_stage, "write_json", interrupted)
    with pytest.raises(KeyboardInterrupt):
        select_stage.run(cfg)
    assert sel.masks.is_file() and sel.summary.is_file() and sel.per_sample.is_file() and sel.config.is_file()
    assert not sel.marker.exists()  # removed before the rewrite began

    with pytest.raises(MasksError, match=r"is an unfinished selection \(no selection.done"):
        read_masks(sel.dir)
    ft = compose_config("stage=finetune", f"run_dir={run_dir}", "finetune.deepspeed=none", f"selection_dir={sel.dir}")
    assert any("is an unfinished selection" in e and "rerun stage=select" in e for e in finetune_check(ft))
    with pytest.raises(ReportError, match="the selection is unfinished"):
        read_selection(sel.dir, run_dir)
    listed, _, notes = find_selections(run_dir, None, None)
    assert listed == [] and any("unfinished selection" in n for n in notes)

    monkeypatch.setattr(select_stage, "write_json", real_write_json)
    select_stage.run(cfg)  # the rerun finishes it
    assert sel.finished() and read_masks(sel.dir)


# ---- 6. masks of an edited corpus ----------------------------------------------------------------------

def test_finetune_refuses_a_corpus_edited_since_attribution_unless_told(tmp_path, tiny_model_dir, caplog):
    from segsft.finetune.stage import run
    from segsft.finetune.settings import FinetuneError
    from segsft.store.fingerprint import check_or_store
    from segsft.store.io import file_sha256
    from segsft.store.layout import RunLayout

    rows = make_traces(3, seed=1)
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    run_dir = tmp_path / "r"
    check_or_store(RunLayout(run_dir).attribution.fingerprint, {"corpus_sha256": file_sha256(corpus)}, "scores", "")
    sel = write_masks(tmp_path / "sel", rows, split_mid=False)
    # The same length, another number: the masks' spans still tile every trace.
    text = corpus.read_text()
    edited = text.replace("The sum is", "The sum iz", 1)
    assert len(edited) == len(text) and edited != text
    corpus.write_text(edited)

    def cfg(*extra):
        return compose_config("stage=finetune", f"run_dir={run_dir}", f"data.path={corpus}", f"selection_dir={sel}",
                              f"finetune_dir={tmp_path / 'ft'}", f"model.name_or_path={tiny_model_dir}",
                              "finetune.deepspeed=none", "finetune.max_steps=1", *extra)

    with pytest.raises(FinetuneError, match=r"is not the corpus the masks of .* were made from .*allow_corpus_change=true"):
        run(cfg(), checked=True)
    assert not (tmp_path / "ft" / "train_tokens.parquet").exists()
    with caplog.at_level(logging.WARNING):
        out = run(cfg("finetune.allow_corpus_change=true"), checked=True)
    assert out.model_dir.is_dir()
    assert any("training anyway because finetune.allow_corpus_change=true" in r.getMessage() for r in caplog.records)


# ---- 7. names that escape their directory ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../escape", "a/b", "..", "a\\b"])
def test_a_name_key_with_a_separator_or_dotdot_is_refused(tmp_path, name):
    from segsft.run.path_keys import path_key_problems

    errs = path_key_problems(compose_config("stage=select", f"run_dir={tmp_path}", f"select.name='{name}'"))
    assert len(errs) == 1 and errs[0].startswith("select.name=") and "without path separators or '..'" in errs[0]


def test_select_with_an_escaping_name_writes_nothing_outside(tmp_path):
    run_dir = _synthetic_run(tmp_path / "deep" / "r")
    out = run_pipeline("stage=select", f"run_dir={run_dir}", "select.name=../../escape")
    assert out.returncode == 2 and "select.name='../../escape'" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "deep" / "escape").exists() and not (run_dir / "selection").exists()


def test_a_users_error_is_shown_once_and_kept_in_the_run_log(tmp_path):
    out = run_pipeline("stage=select", f"run_dir={tmp_path / 'r'}", "select.borderline=maybe")
    assert out.returncode == 2
    said = "select.borderline='maybe': use one of ['rule', 'keep', 'drop']"
    assert (out.stdout + out.stderr).count(said) == 1, out.stdout + out.stderr
    # One problem is one line; several are listed under one heading.
    (line,) = _error_lines(out.stderr)
    assert line.startswith(f"error: {said}")
    (log,) = (tmp_path / "r").rglob("segsft.log")
    assert log.read_text().count(said) == 1 and "[ERROR]" in log.read_text()
    two = run_pipeline("stage=select", f"run_dir={tmp_path / 'r'}", "select.borderline=maybe", "select.unconverged=maybe")
    assert _error_lines(two.stderr)[0] == "error: invalid configuration:" and len(_error_lines(two.stderr)) == 3


@pytest.mark.parametrize("table,content", [("segments", b"PAR1garbagegarbage"), ("samples", b""), ("rejects", b"junk")])
def test_an_unreadable_attribution_table_is_named_for_select_and_report(tmp_path, table, content):
    run_dir = _synthetic_run(tmp_path / "r")
    (bad,) = (run_dir / "attribution").glob(f"{table}-*.parquet")
    bad.write_bytes(content)
    for stage in ("select", "report"):
        out = run_pipeline(f"stage={stage}", f"run_dir={run_dir}")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        (line,) = _error_lines(out.stderr)  # one damaged table: one line, its path and the remedy
        assert line.startswith("error: ") and f"attribution tables that are not readable Parquet files: {bad} (" in line
        assert "part-00000-of-00001.done" in line and line.endswith("it recomputes those parts only."), line
    assert not (run_dir / "selection").exists()
    # A directory name with " (" in it is named as well (the parts are not parsed back from the text).
    from segsft.store.attribution_tables import AttributionDamaged, open_attribution

    odd = run_dir.rename(tmp_path / "r (v2)")
    with pytest.raises(AttributionDamaged, match=r"part-00000-of-00001\.done"):
        open_attribution(odd)


def test_compare_says_which_unfinished_selection_it_leaves_out(tmp_path, caplog):
    from segsft.compare.stage import run as compare
    from segsft.select.stage import run as select

    run_dir = _synthetic_run(tmp_path / "r")
    for method in ("attribution", "random", "full"):
        select(compose_config("stage=select", f"run_dir={run_dir}", f"select.method={method}"))
    (cut,) = (run_dir / "selection").glob("full-*")
    (cut / "selection.done").unlink()
    with caplog.at_level(logging.WARNING):
        out = compare(compose_config("stage=compare", f"run_dir={run_dir}"))
    assert pl.read_parquet(out).height == 1  # the two finished ones
    assert [r.message for r in caplog.records if "left out" in r.message] == [
        f"compare: {cut} is left out: it has no completion marker (its select was stopped or is running)"]


@pytest.mark.parametrize("how", ["garbled", "empty", "no train column", "summary garbled"])
def test_compare_names_a_selection_it_cannot_read(tmp_path, how):
    import pyarrow.parquet as pq

    run_dir = _synthetic_run(tmp_path / "r")
    for method in ("attribution", "random"):
        assert run_pipeline("stage=select", f"run_dir={run_dir}", f"select.method={method}").returncode == 0
    (sel,) = (run_dir / "selection").glob("random-*")
    masks, summary = sel / "masks.parquet", sel / "summary.json"
    if how == "garbled":
        masks.write_bytes(b"PAR1junk")
    elif how == "empty":
        masks.write_bytes(b"")
    elif how == "no train column":
        pq.write_table(pq.read_table(masks).drop(["train"]), masks)
    else:
        summary.write_text("{not json")
    out = run_pipeline("stage=compare", f"run_dir={run_dir}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    (line,) = _error_lines(out.stderr)
    said = {"garbled": f"error: {masks} is not a readable Parquet file (", "empty": f"error: {masks} is not a readable Parquet file (",
            "no train column": f"error: {masks} lacks column(s) ['train']: ",
            "summary garbled": f"error: {summary} is not a select stage's summary ("}[how]
    assert line.startswith(said) and line.endswith(f"delete {sel} and rerun the select stage that made it (its settings: "
                                                   f"{sel / 'config.yaml'})"), line
    assert not (run_dir / "compare").exists()


def test_select_says_how_many_strengths_are_not_finite_and_counts_them_as_zero(tmp_path, caplog):
    from segsft.select.stage import run

    nan = float("nan")
    rows = (segment_rows("a", [nan, 0.3, 0.1, 0.05, 0.05], [0.2, 0.9, 0.5, None, 0.1], [4, 6, 3, 2, 5])
            + segment_rows("b", [0.2, float("inf"), 0.2], [0.3, 0.5, 0.7], [10, 1, 2]) + segment_rows("c", [1.0], [0.99], [8]))
    write_attribution(tmp_path / "r", rows, world=1)
    zero = segment_rows("a", [0.0, 0.3, 0.1, 0.05, 0.05], [0.2, 0.9, 0.5, None, 0.1], [4, 6, 3, 2, 5])
    write_attribution(tmp_path / "z", zero, world=1)
    with caplog.at_level(logging.WARNING):
        run(compose_config("stage=select", f"run_dir={tmp_path / 'r'}", "select.always_keep=[]"))
    said = [r.message for r in caplog.records if "not finite" in r.message or "NaN, infinite or null" in r.message]
    assert len(said) == 1 and said[0].startswith("select: 2 segment(s) of 2 sample(s) have a strength that is NaN")
    # The NaN counts as 0: sample a's decisions are those of the same sample with a 0 there.
    run(compose_config("stage=select", f"run_dir={tmp_path / 'z'}", "select.always_keep=[]"))
    got = {d: pl.read_parquet(tmp_path / d / "selection" / "*" / "masks.parquet").filter(pl.col("sample_id") == "a")
           .sort("segment")["train"].to_list() for d in ("r", "z")}
    assert got["r"] == got["z"]


def test_select_refuses_tables_with_samples_but_no_segment(tmp_path):
    run_dir = _synthetic_run(tmp_path / "r")
    (seg,) = (run_dir / "attribution").glob("segments-*.parquet")
    pq.write_table(pq.read_table(seg).slice(0, 0), seg)
    out = run_pipeline("stage=select", f"run_dir={run_dir}")
    assert out.returncode == 2
    assert _error_lines(out.stderr) == [f"error: the attribution tables under {run_dir / 'attribution'} hold 3 sample(s) "
                                        "but no segment: they were cut short or rewritten; rerun stage=attribute into a "
                                        "new run_dir"]
    assert not (run_dir / "selection").exists()


# ---- 8, 9. formats we do not read; data.limit=0 ------------------------------------------------------------

def test_csv_gzip_and_garbage_say_what_is_wrong(tmp_path):
    from segsft.store.corpus import CorpusError, corpus_path_problem, read_corpus

    fields = {"id": "id", "question": "question", "solution": "solution", "answer": "answer"}
    csv = tmp_path / "c.csv"
    csv.write_text("id,question,solution,answer\na,q,s,1\n")
    assert "format .csv not supported: use JSONL or Parquet" in corpus_path_problem(csv)
    gz = tmp_path / "c.jsonl.gz"
    gz.write_bytes(gzip.compress(b'{"id": "a"}\n'))
    with pytest.raises(CorpusError, match=r"format .gz not supported: decompress it first"):
        read_corpus(gz, fields)
    hidden = tmp_path / "c.jsonl"  # gzip under a plain name
    hidden.write_bytes(gzip.compress(b'{"id": "a"}\n'))
    with pytest.raises(CorpusError, match=r"is gzip-compressed: format not supported: decompress it first"):
        read_corpus(hidden, fields)
    junk = tmp_path / "j.jsonl"
    junk.write_text("hello\nworld {\n")
    with pytest.raises(CorpusError, match=r"no line is a valid JSON object \(first bad line 1: invalid JSON"):
        read_corpus(junk, fields)


def test_csv_corpus_is_one_line_at_the_command_line(tmp_path):
    csv = tmp_path / "c.csv"
    csv.write_text("id,question,solution,answer\na,q,s,1\n")
    out = run_pipeline("stage=attribute", f"run_dir={tmp_path / 'r'}", f"data.path={csv}")
    assert out.returncode == 2 and "format .csv not supported" in out.stderr and "no field" not in out.stderr


def test_data_limit_zero_is_refused_up_front_like_evaluate_limit(tmp_path):
    from segsft.attribute.config import check_attribute
    from segsft.finetune import check_config as finetune_check

    cfg = compose_config("stage=attribute", f"run_dir={tmp_path}", "data.limit=0")
    assert "data.limit=0: use null (every row) or an integer >= 1" in check_attribute(cfg)
    ft = compose_config("stage=finetune", f"run_dir={tmp_path}", "data.limit=0", "finetune.mode=full",
                        "finetune.full_scope=corpus", "finetune.deepspeed=none")
    assert "data.limit=0: use null (every row) or an integer >= 1" in finetune_check(ft)


# ---- 10. a failed run does not block its fix -------------------------------------------------------------

def test_the_fingerprint_binds_once_something_is_scored(tmp_path):
    from segsft.store.fingerprint import SettingsChanged, check_or_store, holds_scores
    from segsft.store.layout import RunLayout

    lay = RunLayout(tmp_path).attribution

    def check(fp):
        check_or_store(lay.fingerprint, fp, "scores", f"set a new run_dir=... or reuse {tmp_path}",
                       bound=lambda: holds_scores(lay))

    check({"corpus_sha256": "csv", "model": "m"})  # the failed run: nothing scored
    check({"corpus_sha256": "jsonl", "model": "m"})  # its fix takes the directory
    assert json.loads(lay.fingerprint.read_text())["corpus_sha256"] == "jsonl"
    pq.write_table(pa.table({"sample_id": ["a"]}), lay.table("samples", "00000-of-00001"))
    with pytest.raises(SettingsChanged, match="holds scores made with other settings"):
        check({"corpus_sha256": "other", "model": "m"})


@pytest.mark.slow  # end to end; test_the_fingerprint_binds_once_something_is_scored covers the rule
def test_rerunning_a_run_that_scored_nothing_with_the_fixed_corpus_works(tmp_path, tiny_model_dir):
    csv = tmp_path / "c.csv"
    csv.write_text("id,question,solution,answer\na,q,s,1\n")
    good = write_jsonl(tmp_path / "c.jsonl", make_traces(2, seed=2))
    common = [f"run_dir={tmp_path / 'r'}", f"model.name_or_path={tiny_model_dir}", "attribute.rule=gauss_legendre",
              "attribute.steps=2", "attribute.device=cpu", "stage=attribute"]
    assert run_pipeline(*common, f"data.path={csv}").returncode == 2
    # A run that got as far as the fingerprint (an older check, a row-level failure) then failed:
    (tmp_path / "r" / "attribution").mkdir(parents=True, exist_ok=True)
    (tmp_path / "r" / "attribution" / "fingerprint.json").write_text(json.dumps({"corpus_sha256": "of the csv"}))
    out = run_pipeline(*common, f"data.path={good}")
    assert out.returncode == 0, out.stderr[-2000:]


# ---- 11. Hydra's own messages ------------------------------------------------------------------------

@pytest.mark.parametrize("override,line", [
    ("select.always_keep=0", "error: select.always_keep=0: select.always_keep is a list: write it in brackets, e.g. "
                             "select.always_keep=[0]"),
    ("evaluate.benchmarks=aime24", "error: evaluate.benchmarks=aime24: evaluate.benchmarks is a list: write it in "
                                   "brackets, e.g. evaluate.benchmarks=[aime24]"),
    ("select.top_mass=abc", "error: select.top_mass=abc: select.top_mass takes a number (e.g. 0.7), not 'abc'"),
    ("select.max_consistancy=0.5", "error: select.max_consistancy is not a key of select.*: did you mean "
                                   "select.max_consistency? check the spelling (select.* has: "),
    ("select.top_mass=0.7,0.8", "error: select.top_mass=0.7,0.8: a comma sweeps over values only under --multirun: add "
                                "-m to run one job per value, or write a list as select.top_mass=[0.7,0.8] or text as "
                                "select.top_mass='\"0.7,0.8\"'"),
    ("+select.top_mas=0.5", "error: select.top_mas is not a key of select.*: did you mean select.top_mass? check the "
                            "spelling (select.* has: "),
    ("model=foo", "error: model=foo: there is no such model (conf/model/foo.yaml): use one of r1_distill_qwen_1_5b, "),
    ("run_dir=/tmp/résumé", "error: cannot read the override 'run_dir=/tmp/résumé': a value with spaces, non-ASCII "
                            "letters or any of ()[]{},:'\" must be quoted: 'run_dir=\"/tmp/résumé\"'"),
])
def test_hydra_config_errors_are_our_one_line(override, line):
    out = run_pipeline("stage=select", override)
    assert out.returncode == 2
    lines = _error_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith(line), out.stderr


# ---- 12. rules and ids that do nothing --------------------------------------------------------------------

def test_an_always_keep_index_out_of_range_is_warned_with_the_count(tmp_path, caplog):
    from segsft.select.stage import run

    run_dir = _synthetic_run(tmp_path / "r")
    with caplog.at_level(logging.WARNING):
        run(compose_config("stage=select", f"run_dir={run_dir}", "select.always_keep=[0,4,100]"))
    msgs = [r.getMessage() for r in caplog.records if "always_keep" in r.getMessage()]
    # a has 5 segments, b 3, c 1: index 4 misses b and c, 100 misses all three; 0 is everywhere.
    assert msgs == ["select: select.always_keep: index out of range (4 in 2 of 3, 100 in 3 of 3 samples): it keeps "
                    "nothing there; use indices within the samples' segments (negative ones count from the end)"]


def test_a_duplicate_problem_id_is_logged(tmp_path, caplog):
    from segsft.store.corpus import read_problems

    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "t1", "question": "q", "answer": "1"},
                                              {"id": "t1", "question": "q2", "answer": "2"}])
    with caplog.at_level(logging.WARNING):
        ok, _ = read_problems(path, {"id": "id", "question": "question", "answer": "answer"})
    assert [p.problem_id for p in ok] == ["t1", "t1#row1"]
    assert any("row 1 repeats problem id 't1'" in r.getMessage() and "t1#row1" in r.getMessage() for r in caplog.records)


# ---- 13. a huge single-line trace ----------------------------------------------------------------------

def test_a_huge_trace_is_rejected_without_tokenizing_it(tmp_path, tokenizer, monkeypatch):
    import segsft.attribute.runner as runner
    from omegaconf import OmegaConf

    from segsft.store.corpus import Sample

    cfg = OmegaConf.to_container(compose_config("stage=attribute", f"run_dir={tmp_path}", "attribute.max_tokens=512"),
                                 resolve=True)
    real, seen = runner.build_sequence, []

    def build_sequence(tok, question, solution, *a, **k):
        seen.append(len(solution))
        return real(tok, question, solution, *a, **k)

    monkeypatch.setattr(runner, "build_sequence", build_sequence)
    huge = Sample("huge", "q?", "7 " * 1_000_000, "7", "c.jsonl", 0)
    small = Sample("small", "q?", "We add 3 and 4. The sum is 7.", "7", "c.jsonl", 1)
    ready, rejects = runner.AttributeStage(cfg)._prepare([huge, small], tokenizer)
    assert seen == [len(small.solution)]  # the huge one never reached the tokenizer
    assert [r["sample_id"] for r in rejects] == ["huge"]
    assert "2,000,0" in rejects[0]["reason"] and "rejected before tokenizing" in rejects[0]["reason"]
    assert [s.sample_id for s, _ in ready] == ["small"]


def test_a_model_directory_transformers_cannot_load_is_named_before_any_load(tmp_path, tiny_model_dir):
    import shutil

    from segsft.run.models import check_model_config

    want = "give a model directory (config.json, safetensors, tokenizer) or a hub id such as HuggingFaceTB/SmolLM2-135M-Instruct"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model_dir, bad)
    (bad / "config.json").write_text("{garbage")
    notok = tmp_path / "notok"
    notok.mkdir()
    shutil.copy(Path(tiny_model_dir) / "config.json", notok / "config.json")
    assert check_model_config(ModelConf(name_or_path=str(empty))) == [f"model.name_or_path={str(empty)!r} holds no config.json: {want}"]
    assert check_model_config(ModelConf(name_or_path=str(bad))) == [
        f"model.name_or_path={str(bad)!r}: {bad / 'config.json'} is not a JSON object: {want}"]
    assert check_model_config(ModelConf(name_or_path=str(notok)))[0].startswith(
        f"model.name_or_path={str(notok)!r} holds no tokenizer (")
    assert check_model_config(ModelConf(name_or_path=str(tiny_model_dir))) == []
    for kept in ("sentencepiece.bpe.model", "spm.model", "cl100k.tiktoken", "tekken.json", "merges.txt"):
        only = tmp_path / f"only-{kept}"
        only.mkdir()
        shutil.copy(Path(tiny_model_dir) / "config.json", only / "config.json")
        (only / kept).write_text("x")
        assert check_model_config(ModelConf(name_or_path=str(only))) == [], kept
    assert check_model_config(ModelConf(name_or_path=str(tiny_model_dir), dtype="int4")) == [
        "model.dtype='int4': use auto or one of ['bf16', 'bfloat16', 'float16', 'float32', 'float64', 'fp16', 'fp32']"]
    from segsft.run.generation import check_engine

    for stage in ("evaluate", "generate"):
        node = getattr(compose_config(f"stage={stage}", f"{stage}.dtype=int4"), stage)
        assert f"{stage}.dtype='int4': use auto or one of ['bf16'," in " ".join(check_engine(node, stage))
    out = run_pipeline("stage=attribute", f"run_dir={tmp_path / 'r'}", f"model.name_or_path={empty}", "attribute.device=cpu")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "holds no config.json" in out.stderr


def test_a_damaged_fingerprint_or_part_table_is_named_on_resume(tmp_path, tiny_model_dir):
    import shutil

    corpus = write_jsonl(tmp_path / "c.jsonl", make_traces(2, seed=3))
    common = [f"model.name_or_path={tiny_model_dir}", f"data.path={corpus}", "attribute.rule=gauss_legendre",
              "attribute.steps=2", "attribute.device=cpu", "stage=attribute"]
    assert run_pipeline(*common, f"run_dir={tmp_path / 'r'}").returncode == 0
    for case in ("{garbage", "[1]", "samples"):
        r = tmp_path / f"r-{len(case)}"
        shutil.copytree(tmp_path / "r", r)
        adir = r / "attribution"
        if case == "samples":
            (adir / "part-00000-of-00001.done").unlink()
            (adir / "samples-00000-of-00001.parquet").write_bytes(b"junk")
            said = f"error: {adir / 'samples-00000-of-00001.parquet'} is not a readable Parquet file ("
        else:
            (adir / "fingerprint.json").write_text(case)
            said = (f"error: {adir / 'fingerprint.json'} is not a settings record this pipeline wrote (not a JSON object), "
                    f"and {adir} holds scores made under it: set a new run_dir=")
        out = run_pipeline(*common, f"run_dir={r}")
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        (line,) = [ln for ln in _error_lines(out.stderr) if not ln.startswith("Loading")]  # less the model's load bar
        assert line.startswith(said), line


def test_a_generations_directory_is_named_as_a_directory(tmp_path):
    from segsft.evaluate.stage import check_config

    errs = check_config(compose_config("stage=evaluate", f"run_dir={tmp_path / 'r'}", f"evaluate.generations={tmp_path}"))
    assert errs == [f"evaluate.generations={str(tmp_path)!r} is a directory: give a JSONL or Parquet file with id, answer "
                    "and output columns"]


def test_an_empty_or_unreadable_generations_file_is_named_as_such(tmp_path):
    empty, garbage = tmp_path / "empty.jsonl", tmp_path / "garbage.jsonl"
    empty.write_text("")
    garbage.write_text("{not json\n")
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(b"PAR1 cut short")
    for f, said in ((empty, f"error: evaluate.generations={empty} is empty: give a JSONL or Parquet file"),
                    (garbage, f"error: evaluate.generations={garbage}: no line is a valid JSON object (first bad line 1"),
                    (cut, f"error: evaluate.generations={cut} is not a readable Parquet file (")):
        out = run_pipeline("stage=evaluate", f"run_dir={tmp_path / 'r'}", f"evaluate.generations={f}")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert [x for x in out.stderr.splitlines() if x.startswith("error:")][0].startswith(said), out.stderr
        assert "data.path" not in out.stderr


def test_generations_messages_name_the_mapped_columns(tmp_path):
    """With evaluate.fields mapping id and answer, every 'give a file with ...' line names the
    user's columns, not the literal id/answer the user does not have."""
    from segsft.evaluate.stage import check_config

    mapped = ("evaluate.fields.id=qid", "evaluate.fields.answer=gold")
    errs = check_config(compose_config("stage=evaluate", f"run_dir={tmp_path / 'r'}",
                                       f"evaluate.generations={tmp_path}", *mapped))
    assert errs == [f"evaluate.generations={str(tmp_path)!r} is a directory: give a JSONL or Parquet file with "
                    "'qid' (evaluate.fields.id), 'gold' (evaluate.fields.answer) and output columns"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    out = run_pipeline("stage=evaluate", f"run_dir={tmp_path / 'r'}", f"evaluate.generations={empty}", *mapped)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert line == (f"error: evaluate.generations={empty} is empty: give a JSONL or Parquet file with "
                    "'qid' (evaluate.fields.id), 'gold' (evaluate.fields.answer) and output"), line
