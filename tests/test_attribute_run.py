"""The attribution stage over a corpus: tables, rejects, sharding, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf

from conftest import REPO, compose_config, make_traces, write_jsonl
from segsft.attribute import AttributeStage
from segsft.schemas import REJECTS_SCHEMA, SAMPLES_SCHEMA, SEGMENTS_SCHEMA
from segsft.method.text import build_sequence, resolve_pattern


def overrides(run_dir, corpus, model_dir, *extra):
    return [f"run_dir={run_dir}", f"data.path={corpus}", f"model.name_or_path={model_dir}",
            "attribute.rule=gauss_legendre", "attribute.steps=4", "attribute.batch_alphas=2", "attribute.flush_every=2", *extra]


def run_inprocess(ovr, rank=0, world=1):
    cfg = OmegaConf.to_container(compose_config(*ovr), resolve=True)
    return AttributeStage(cfg).run(rank, world)


def read(run_dir, table):
    return pl.read_parquet(Path(run_dir) / "attribution" / f"{table}-*.parquet")


def env1():
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def pipeline_cmd(ovr):
    return [sys.executable, str(REPO / "pipeline.py"), "stage=attribute", *ovr]


def sorted_tables(run_dir):
    seg = read(run_dir, "segments").sort("sample_id", "segment")
    smp = read(run_dir, "samples").drop("seconds").sort("sample_id")
    rej = read(run_dir, "rejects").sort("sample_id")
    return seg, smp, rej


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    rows = make_traces(7)
    lines = [rows[0], rows[1], '{"id": "broken", "question": ', {**rows[2], "answer": None},
             {**rows[3], "solution": ""}, rows[4], {**rows[5], "solution": rows[5]["solution"] * 40}, rows[6]]
    for r in lines:
        if isinstance(r, dict) and r.get("answer") is None:
            r.pop("answer", None)
    return write_jsonl(d / "traces.jsonl", lines)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, corpus, tiny_model_dir):
    run_dir = tmp_path_factory.mktemp("run1")
    run_inprocess(overrides(run_dir, corpus, tiny_model_dir, "attribute.max_tokens=400"))
    return run_dir


def test_tables_follow_the_contract(single_run, corpus, tokenizer):
    adir = Path(single_run) / "attribution"
    # Hidden files are the writers' lock (the OS lock is released with the process); the
    # holder's note is gone once the run ends.
    assert sorted(p.name for p in adir.iterdir() if p.name.startswith(".")) == [".lock-00000-of-00001"]
    assert sorted(p.name for p in adir.iterdir() if not p.name.startswith(".")) == [
        "fingerprint.json", "part-00000-of-00001.done", "rejects-00000-of-00001.parquet",
        "samples-00000-of-00001.parquet", "segments-00000-of-00001.parquet"]
    seg, smp, rej = (pl.read_parquet(adir / f"{t}-00000-of-00001.parquet") for t in ("segments", "samples", "rejects"))
    for t, schema in (("segments", SEGMENTS_SCHEMA), ("samples", SAMPLES_SCHEMA), ("rejects", REJECTS_SCHEMA)):
        assert pq.read_schema(adir / f"{t}-00000-of-00001.parquet").remove_metadata().equals(schema)
    # Every input row is in exactly one of samples or rejects.
    assert smp.height + rej.height == 8
    assert set(smp["sample_id"]) & set(rej["sample_id"]) == set()
    assert sorted(smp["sample_id"]) == ["s000", "s001", "s004", "s006"]
    reasons = dict(zip(rej["row"], rej["reason"]))
    assert "invalid JSON" in reasons[2]
    assert "missing field 'answer'" in reasons[3]
    assert "empty field 'solution'" in reasons[4]
    assert "attribute.max_tokens=400" in reasons[6] and rej.filter(pl.col("row") == 6)["sample_id"][0] == "s005"
    # Segments agree with an independent segmentation and tokenization.
    rows = {r["id"]: r for r in make_traces(7)}
    for sid in smp["sample_id"]:
        r = rows[sid]
        seq = build_sequence(tokenizer, r["question"], r["solution"], resolve_pattern("default"), r["answer"])
        s = seg.filter(pl.col("sample_id") == sid).sort("segment")
        assert s["segment"].to_list() == list(range(len(seq.segment_chars)))
        assert list(zip(s["char_start"], s["char_end"])) == seq.segment_chars
        assert list(zip(s["token_start"], s["token_end"])) == seq.segment_tokens
        assert (s["n_tokens"] == s["token_end"] - s["token_start"]).all()
        assert [len(x) for x in s["token_attr"]] == s["n_tokens"].to_list()
        assert np.allclose([sum(x) for x in s["token_attr"]], s["attr_sum"], atol=1e-5)
        info = smp.filter(pl.col("sample_id") == sid).row(0, named=True)
        assert info["n_segments"] == s.height and info["n_tokens"] == int(seq.answer_positions[-1]) + 1
        # train_tokens: the step-8 training sequence (prompt + trace, no answer suffix).
        assert info["train_tokens"] == len(build_sequence(tokenizer, r["question"], r["solution"], resolve_pattern("default")).input_ids)
        assert info["rule"] == "gauss_legendre" and info["steps"] == 4
        gap = abs(info["attr_total"] - (info["answer_logprob"] - info["baseline_logprob"])) / abs(info["answer_logprob"] - info["baseline_logprob"])
        assert info["completeness_gap"] == pytest.approx(gap)


def test_rerun_is_a_no_op_and_never_duplicates(single_run, corpus, tiny_model_dir):
    before = sorted_tables(single_run)
    # A kill after the marker but before the chunks were removed: the rerun tidies up.
    stale = Path(single_run) / "attribution" / "_partial" / "00000-of-00001"
    stale.mkdir(parents=True)
    (stale / "samples-00000.parquet").write_bytes(b"")
    run_inprocess(overrides(single_run, corpus, tiny_model_dir, "attribute.max_tokens=400"))
    assert not (Path(single_run) / "attribution" / "_partial").exists()
    (Path(single_run) / "attribution" / "part-00000-of-00001.done").unlink()
    # Without its marker the part is re-checked: every sample is found done, none redone.
    run_inprocess(overrides(single_run, corpus, tiny_model_dir, "attribute.max_tokens=400"))
    after = sorted_tables(single_run)
    for a, b in zip(before, after):
        assert a.equals(b)


def test_torchrun_two_ranks_equal_one_process(tmp_path, corpus, tiny_model_dir, single_run):
    run_dir = tmp_path / "run2"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           str(REPO / "pipeline.py"), "stage=attribute", *overrides(run_dir, corpus, tiny_model_dir, "attribute.max_tokens=400")]
    out = subprocess.run(cmd, env=env1(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    names = sorted(p.name for p in (run_dir / "attribution").glob("*"))
    assert "segments-00000-of-00002.parquet" in names and "segments-00001-of-00002.parquet" in names
    assert "part-00001-of-00002.done" in names
    seg2, smp2, rej2 = sorted_tables(run_dir)
    seg1, smp1, rej1 = sorted_tables(single_run)
    assert rej2.equals(rej1)
    assert smp2["sample_id"].to_list() == smp1["sample_id"].to_list()
    assert seg2.select("sample_id", "segment", "token_start", "token_end").equals(seg1.select("sample_id", "segment", "token_start", "token_end"))
    assert np.allclose(seg2["attr_sum"], seg1["attr_sum"], rtol=1e-4, atol=1e-6)
    # Each rank logged its resolved config and output directory.
    assert "resolved config" in out.stderr + out.stdout


def test_killed_run_resumes_to_identical_tables(tmp_path, tiny_model_dir):
    corpus = write_jsonl(tmp_path / "c.jsonl", make_traces(40, seed=3))
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    ovr = lambda d: overrides(d, corpus, tiny_model_dir, "attribute.flush_every=1")  # noqa: E731
    subprocess.run(pipeline_cmd(ovr(ref_dir)), env=env1(), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(pipeline_cmd(ovr(kill_dir)), env=env1(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = kill_dir / "attribution" / "_partial" / "00000-of-00001"
    deadline = time.time() + 240
    while time.time() < deadline and len(list(partial.glob("samples-*.parquet"))) < 3 and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunks = len(list(partial.glob("samples-*.parquet")))
    assert 3 <= chunks < 40, "the run must be killed part-way"
    assert not (kill_dir / "attribution" / "part-00000-of-00001.done").exists()
    out = subprocess.run(pipeline_cmd(ovr(kill_dir)), env=env1(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    # flush_every=1: each committed chunk holds one sample, and exactly those are skipped.
    assert f"{chunks} already done (0 of them in other parts), {40 - chunks} to do" in out.stdout + out.stderr
    for a, b in zip(sorted_tables(ref_dir), sorted_tables(kill_dir)):
        assert a.equals(b)
    assert read(kill_dir, "samples")["sample_id"].n_unique() == 40


def test_a_rerun_with_another_world_size_completes_the_run_and_consolidates(tmp_path, corpus, tiny_model_dir, single_run):
    from segsft.attribute import STAGE
    from segsft.store.attribution_tables import open_attribution

    run_dir = tmp_path / "w"
    ovr = overrides(run_dir, corpus, tiny_model_dir, "attribute.max_tokens=400")
    first = run_inprocess(ovr, 0, 2)  # rank 1 of 2 never ran
    second = run_inprocess(ovr, 0, 1)  # one process takes over: rank 0's rows are not scored again
    assert second["in_other_parts"] == first["rows_in_shard"] == 4
    assert second["scored"] + second["rejected"] == 4
    seg1, smp1, rej1 = sorted_tables(single_run)

    def same_as_single_run(seg, smp, rej):
        assert smp["sample_id"].to_list() == smp1["sample_id"].to_list() and rej.equals(rej1)
        assert seg.select("sample_id", "segment").equals(seg1.select("sample_id", "segment"))
        assert np.allclose(seg["attr_sum"], seg1["attr_sum"], rtol=1e-4, atol=1e-6)

    tables = open_attribution(run_dir)
    same_as_single_run(tables.scan_segments(("sample_id", "segment", "attr_sum")).collect().sort("sample_id", "segment"),
                       tables.scan_samples().collect().sort("sample_id"), tables.scan_rejects().collect().sort("sample_id"))
    STAGE.run(compose_config(*ovr, "attribute.consolidate=true"), 0, 1)
    names = sorted(p.name for p in (run_dir / "attribution").iterdir() if not p.name.startswith("."))
    assert names == ["fingerprint.json", "part-00000-of-00001.done", "rejects-00000-of-00001.parquet",
                     "samples-00000-of-00001.parquet", "segments-00000-of-00001.parquet"]
    same_as_single_run(*sorted_tables(run_dir))
    # Consolidating again changes nothing.
    before = sorted_tables(run_dir)
    STAGE.run(compose_config(*ovr, "attribute.consolidate=true"), 0, 1)
    for x, y in zip(before, sorted_tables(run_dir)):
        assert x.equals(y)


def test_after_a_complete_run_the_users_glob_sees_each_sample_once(tmp_path, corpus, tiny_model_dir, single_run):
    # World size 2, rank 1 killed after writing its tables but before its marker; then one
    # process finishes the run. The README's glob must not see rank 1's samples twice.
    from segsft.attribute import STAGE

    run_dir = tmp_path / "g"
    cfg = compose_config(*overrides(run_dir, corpus, tiny_model_dir, "attribute.max_tokens=400"))
    STAGE.run(cfg, 0, 2)
    STAGE.run(cfg, 1, 2)
    (run_dir / "attribution" / "part-00001-of-00002.done").unlink()
    assert (run_dir / "attribution" / "segments-00001-of-00002.parquet").is_file()
    STAGE.run(cfg, 0, 1)
    seg = pl.scan_parquet(str(run_dir / "attribution" / "segments-*.parquet")).collect().sort("sample_id", "segment")
    smp = pl.scan_parquet(str(run_dir / "attribution" / "samples-*.parquet")).collect().sort("sample_id")
    seg1, smp1, _ = sorted_tables(single_run)
    assert smp["sample_id"].to_list() == smp1["sample_id"].to_list()
    assert seg.select("sample_id", "segment").equals(seg1.select("sample_id", "segment"))
    assert np.allclose(seg["attr_sum"], seg1["attr_sum"], rtol=1e-4, atol=1e-6)


def test_a_rerun_with_other_settings_or_corpus_is_refused_naming_them(tmp_path, corpus, tiny_model_dir, single_run):
    before = sorted_tables(single_run)
    other = write_jsonl(tmp_path / "other.jsonl", make_traces(3, seed=9))
    for extra, needle in ((["attribute.rule=linspace", "attribute.steps=8"], "rule: 'gauss_legendre' there, 'linspace' now"),
                          (["attribute.baseline=zero"], "baseline: 'pad' there, 'zero' now")):
        out = subprocess.run(pipeline_cmd(overrides(single_run, corpus, tiny_model_dir, "attribute.max_tokens=400", *extra)),
                             env=env1(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        assert needle in out.stderr and "set a new run_dir=" in out.stderr, out.stderr[-2000:]
    from segsft.store.fingerprint import SettingsChanged

    with pytest.raises(SettingsChanged, match="corpus_sha256"):
        run_inprocess(overrides(single_run, other, tiny_model_dir, "attribute.max_tokens=400"))
    for a, b in zip(before, sorted_tables(single_run)):
        assert a.equals(b)


def test_a_duplicate_id_whose_first_copy_is_rejected_survives_a_resume(tmp_path, tiny_model_dir, caplog):
    good = make_traces(2, seed=5)
    rows = [{**good[0], "id": "a", "answer": None}, {**good[0], "id": "a"}, {**good[1], "id": "b"}]
    corpus = write_jsonl(tmp_path / "c.jsonl", rows)
    run_dir = tmp_path / "r"
    run_inprocess(overrides(run_dir, corpus, tiny_model_dir))
    seg, smp, rej = sorted_tables(run_dir)
    assert smp.select("sample_id", "row").rows() == [("a#row1", 1), ("b", 2)]
    assert rej.select("sample_id", "row").rows() == [("a", 0)]
    # Killed after its tables, before its marker: the rerun finds every (id, row) done.
    (run_dir / "attribution" / "part-00000-of-00001.done").unlink()
    with caplog.at_level("INFO", logger="segsft"):
        out = run_inprocess(overrides(run_dir, corpus, tiny_model_dir))
    assert "3 already done (0 of them in other parts), 0 to do" in caplog.text
    assert out["scored"] == 2 and out["rejected"] == 1
    for x, y in zip((seg, smp, rej), sorted_tables(run_dir)):
        assert x.equals(y)
    assert sorted([*smp["row"], *rej["row"]]) == [0, 1, 2]  # every input row exactly once


def test_config_errors_are_reported_together(tmp_path):
    out = subprocess.run(pipeline_cmd([f"run_dir={tmp_path}", "attribute.rule=simpson", "attribute.baseline=blur", "attribute.batch_alphas=0",
                                       "attribute.segment_pattern='(unclosed'"]),
                         env=env1(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    err = out.stderr
    assert "attribute.rule='simpson'" in err and "attribute.baseline='blur'" in err and "attribute.batch_alphas=0" in err
    assert "not a valid regex" in err


def test_a_boolean_key_that_is_not_a_boolean_is_refused_in_one_line(tmp_path, tiny_model_dir):
    # bool('no') would be True and run remote code. The schema types every boolean key: `no` is the
    # boolean false, and anything that is not a boolean is refused before anything loads.
    assert compose_config("model.trust_remote_code=no").model.trust_remote_code is False
    for key in ("model.trust_remote_code", "model.pypi_fallback", "attribute.stable_ranks", "attribute.consolidate",
                "finetune.resume", "finetune.packing", "finetune.liger", "report.token_shading"):
        out = subprocess.run(pipeline_cmd([f"run_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}", f"{key}=maybe"]),
                             cwd=REPO, env=env1(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, key
        assert out.stderr == f"error: {key}=maybe: {key} takes true or false, not 'maybe'\n", out.stderr
    # A hand-made mapping (not composed by Hydra) is typed by the same schema, as strictly.
    from segsft.config_schema import ModelConf, Settings, SettingsError, typed

    assert typed(ModelConf, {"name_or_path": tiny_model_dir, "trust_remote_code": "no"}).trust_remote_code is False
    with pytest.raises(SettingsError, match=r"^model\.trust_remote_code: Value 'maybe' is not a valid bool"):
        Settings.of({"model": {"name_or_path": tiny_model_dir, "trust_remote_code": "maybe"}})


def test_outputs_follow_the_umask(tmp_path):
    import stat

    from segsft.store.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o027)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "b.json").stat().st_mode) == 0o640


def test_a_second_writer_of_a_part_is_refused_naming_the_holder(tmp_path, corpus, tiny_model_dir):
    import socket

    from segsft.store.parts import part_lock
    from segsft.store.layout import RunLayout

    lay = RunLayout(tmp_path).attribution
    with part_lock(lay, "00000-of-00001"):
        out = subprocess.run(pipeline_cmd(overrides(tmp_path, corpus, tiny_model_dir)), cwd=REPO, env=env1(),
                             capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"is being written by PID {os.getpid()} on host {socket.gethostname()}" in out.stderr
    assert not any(lay.dir.glob("samples-*.parquet"))  # it wrote nothing
    # A holder killed with SIGKILL leaves the lock file, but the OS released the lock.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]);"
                               "from segsft.store.parts import part_lock; from segsft.store.layout import RunLayout;"
                               "cm = part_lock(RunLayout(sys.argv[2]).attribution, '00000-of-00001'); cm.__enter__();"
                               "print('held', flush=True); time.sleep(60)", str(REPO), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True, env=env1())
    assert holder.stdout.readline().strip() == "held"
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with part_lock(lay, "00000-of-00001"):
        pass


def test_a_run_where_every_row_is_rejected_fails_with_the_counts(tmp_path, tiny_model_dir):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"id": "a", "question": "q", "solution": "s", "answer": "1"},
                                               {"id": "b", "question": "q", "solution": "s", "answer": "2"}])
    for attempt in range(2):  # the rerun of the finished part says the same
        out = subprocess.run(pipeline_cmd(overrides(tmp_path / "r", bad, tiny_model_dir, "attribute.max_tokens=5")),
                             cwd=REPO, env=env1(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 2 and "Traceback" not in out.stderr, (attempt, out.stderr[-2000:])
        assert "0 scored, 2 rejected of 2 rows" in out.stdout
        assert "every one of the 2 rows of part 00000-of-00001 was rejected" in out.stderr


def test_a_model_path_that_does_not_exist_is_one_line(tmp_path, corpus):
    out = subprocess.run(pipeline_cmd(overrides(tmp_path, corpus, str(tmp_path / "no-such-model"))), cwd=REPO,
                         env=env1(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert f"model.name_or_path='{tmp_path / 'no-such-model'}' does not exist" in out.stderr
