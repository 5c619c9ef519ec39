"""One job per shard (shard.index of shard.count): hydra-submitit-launcher's local executor as a
stand-in for a Slurm array, the parts torchrun's ranks would write, resume, and the one-line
refusals (docs/slurm.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from conftest import compose_config, make_traces, run_pipeline, write_jsonl
from segsft.errors import PipelineError
from segsft.run.dist import rank_and_world
from segsft.store.layout import part_name

#: A corpus of 7 traces, 1 unreadable line and 1 row without an answer: 9 input rows.
ROWS = 9


def overrides(run_dir, corpus, model_dir, *extra):
    return [f"run_dir={run_dir}", f"data.path={corpus}", f"model.name_or_path={model_dir}",
            "attribute.rule=gauss_legendre", "attribute.steps=4", "attribute.batch_alphas=2", "attribute.flush_every=1",
            *extra]


def error_lines(stderr: str) -> list[str]:
    return [x for x in stderr.splitlines() if x.startswith("error:")]


def tables(run_dir: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    read = lambda t: pl.read_parquet(Path(run_dir) / "attribution" / f"{t}-*.parquet")  # noqa: E731
    return (read("segments").sort("sample_id", "segment"), read("samples").drop("seconds").sort("sample_id"),
            read("rejects").sort("sample_id"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rows = make_traces(7, seed=5)
    no_answer = {k: v for k, v in rows[3].items() if k != "answer"}
    lines = [rows[0], rows[1], rows[2], '{"id": "broken", "question": ', no_answer, rows[4], rows[5], rows[6], {**rows[3], "id": "s100"}]
    assert len(lines) == ROWS
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "traces.jsonl", lines)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus, tiny_model_dir):
    """The tables of one plain process (no shard keys, no launcher)."""
    from segsft.attribute import AttributeStage

    run_dir = tmp_path_factory.mktemp("one")
    AttributeStage(OmegaConf.to_container(compose_config(*overrides(run_dir, corpus, tiny_model_dir)), resolve=True)).run()
    return run_dir


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory, corpus, tiny_model_dir):
    """Two shards as two processes of hydra-submitit-launcher's local executor (Slurm's stand-in)."""
    run_dir = tmp_path_factory.mktemp("sharded")
    out = run_pipeline("-m", "stage=attribute", *overrides(run_dir, corpus, tiny_model_dir), "shard.index=range(0,2)",
                   "shard.count=2", "hydra/launcher=submitit_local", timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


# ---- the mapping: shard i of n is rank i of world n ----------------------------------------------

def test_the_shard_keys_override_rank_and_world(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert rank_and_world(OmegaConf.create({"index": 3, "count": 64})) == (3, 64)
    assert part_name(*rank_and_world(OmegaConf.create({"index": 3, "count": 64}))) == "00003-of-00064"
    assert rank_and_world(compose_config().shard) == (0, 1)  # the defaults leave the launcher's
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert rank_and_world(compose_config().shard) == (1, 2)
    # Both splits at once would overlap: refused, whichever shard.
    for shard in ({"index": 0, "count": 2}, {"index": 0, "count": 1}):
        with pytest.raises(PipelineError, match=r"shard.index/shard.count are set under a launcher with WORLD_SIZE=2"):
            rank_and_world(OmegaConf.create(shard))


def test_the_dispatcher_hands_the_shard_to_the_stage_and_refuses_it_for_the_others(tmp_path, monkeypatch):
    from segsft.run import stages
    from segsft.run.stage_api import load

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    calls = []
    for name in ("attribute", "evaluate", "select"):
        stage = load(name)
        monkeypatch.setattr(type(stage), "check", lambda self, cfg: [])
        monkeypatch.setattr(type(stage), "run", lambda self, cfg, r, w: calls.append((self.name, r, w)))
    for name in ("attribute", "evaluate"):
        stages.run_stage(compose_config(f"stage={name}", f"run_dir={tmp_path}", "shard.index=2", "shard.count=3"))
    assert calls == [("attribute", 2, 3), ("evaluate", 2, 3)]
    for name in ("select", "all"):
        with pytest.raises(stages.ConfigError, match=rf"with stage={name}: only stage=attribute, stage=evaluate"):
            stages.run_stage(compose_config(f"stage={name}", f"run_dir={tmp_path}", "shard.index=0", "shard.count=2"))
    assert len(calls) == 2


def test_a_shard_logs_into_its_own_directory(tmp_path):
    from hydra import compose, initialize_config_dir

    from segsft.store.shipped import conf_dir

    def run_dir_of(*ovr):
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=[f"run_dir={tmp_path}", *ovr], return_hydra_config=True).hydra.run.dir

    assert run_dir_of() == f"{tmp_path}/logs/attribute"
    assert run_dir_of("shard.index=1", "shard.count=2") == f"{tmp_path}/logs/attribute/shard-00001-of-00002"
    assert run_dir_of("stage=evaluate", "shard.index=0", "shard.count=3") == f"{tmp_path}/logs/evaluate/shard-00000-of-00003"


# ---- bad shard keys: one line, exit 2, before any model loads ------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["shard.index=5", "shard.count=4"], "shard.index=5 is outside shard.count=4 (shards are 0..3)"),
    (["shard.index=-1", "shard.count=4"], "shard.index=-1 is outside shard.count=4 (shards are 0..3)"),
    (["shard.count=3"], "shard.count=3 without shard.index"),
    (["shard.index=0", "shard.count=0"], "shard.count=0: use an integer >= 1"),
    # Set by attribution's contract names: named by them.
    (["attribute.shard=4", "attribute.num_shards=4"],
     "attribute.shard=4 is outside attribute.num_shards=4 (shards are 0..3): use -m attribute.shard='range(0,4)' "
     "attribute.num_shards=4, or raise attribute.num_shards"),
    (["attribute.num_shards=2"], "attribute.num_shards=2 without attribute.shard"),
    # One key set: the other is named in its spelling (as a sweep names it, shard_spelling).
    (["attribute.shard=2"], "attribute.shard=2 is outside attribute.num_shards=1 (shards are 0..0): use -m "
     "attribute.shard='range(0,1)' attribute.num_shards=1, or raise attribute.num_shards"),
    # Mixed spellings: each key by the name it was set by.
    (["attribute.num_shards=4", "shard.index=7"], "shard.index=7 is outside attribute.num_shards=4"),
])
def test_a_bad_shard_is_one_line_exit_2_before_anything_loads(tmp_path, args, needle):
    # A model and a corpus that do not exist: the shard is checked first, and alone.
    out = run_pipeline("stage=attribute", f"run_dir={tmp_path}", "model.name_or_path=/nonexistent/model",
                   f"data.path={tmp_path / 'none.jsonl'}", *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and needle in lines[0]
    assert not (tmp_path / "attribution").exists()


def test_a_sweep_with_a_shard_out_of_range_submits_no_job(tmp_path):
    out = run_pipeline("-m", "stage=attribute", f"run_dir={tmp_path}", "model.name_or_path=/nonexistent/model",
                   "shard.index=range(0,5)", "shard.count=4", "hydra/launcher=submitit_local")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert error_lines(out.stderr) == ["error: shard.index=4 is outside shard.count=4 (shards are 0..3): use "
                                       "-m shard.index='range(0,4)' shard.count=4, or raise shard.count"]
    assert not list(tmp_path.rglob(".submitit")) and not (tmp_path / "attribution").exists()


@pytest.mark.slow  # submitit waits 15 s for a job's result before it reports the job failed
def test_a_job_refused_on_its_node_is_one_line_in_the_submitting_command(tmp_path, tiny_model_dir):
    out = run_pipeline("-m", "stage=attribute", f"run_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}",
                   f"data.path={tmp_path / 'none.jsonl'}", "shard.index=range(0,2)", "shard.count=2",
                   "hydra/launcher=submitit_local")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: a job of the multirun failed (its log: ")
    assert f"corpus file {tmp_path / 'none.jsonl'} does not exist" in lines[0]
    log = Path(lines[0].split("(its log: ")[1].split(")")[0])
    assert log.is_file() and "does not exist" in log.read_text()


def test_a_failed_job_of_the_launcher_is_our_one_line():
    from submitit.core.utils import UncompletedJobError

    from segsft.run.hydra_errors import failed_job_line

    ex = UncompletedJobError("Job 77 (task: 0) with path /r/sweeps/attribute/.submitit/77/77_0_result.pkl\n"
                             "has not produced any output (state: FINISHED)\nError stream produced:\n" + "-" * 40 +
                             "\n[WARNING] an accelerator warning\nerror: invalid configuration:\n  - data.path is empty: "
                             "point it\n  - model.name_or_path is empty: give it\n")
    assert failed_job_line(ex) == ("a job of the multirun failed (its log: /r/sweeps/attribute/.submitit/77/77_0_log.err): "
                                   "invalid configuration: data.path is empty: point it; model.name_or_path is empty: give it")
    assert failed_job_line(UncompletedJobError("Job 77 ...\nError stream produced:\nTraceback (most recent call last):")) is None
    # A crash after one of our lines keeps submitit's report.
    crash = "Job 77 ...\nError stream produced:\nerror: x\nTraceback (most recent call last):\n  File ...\nKeyError: 1"
    assert failed_job_line(UncompletedJobError(crash)) is None
    assert failed_job_line(RuntimeError("error: x")) is None


# ---- two jobs, then select: the tables of one process ---------------------------------------------

def test_two_shard_jobs_write_the_parts_of_two_ranks_into_one_run_dir(two_jobs):
    adir = two_jobs / "attribution"
    assert sorted(p.name for p in adir.iterdir() if not p.name.startswith(".")) == [
        "fingerprint.json", "part-00000-of-00002.done", "part-00001-of-00002.done",
        "rejects-00000-of-00002.parquet", "rejects-00001-of-00002.parquet",
        "samples-00000-of-00002.parquet", "samples-00001-of-00002.parquet",
        "segments-00000-of-00002.parquet", "segments-00001-of-00002.parquet"]
    # Shard i took rows i, i+2, ... (torchrun's rank i of 2).
    for i in (0, 1):
        rows = pl.concat([pl.read_parquet(adir / f"{t}-{part_name(i, 2)}.parquet", columns=["row"])
                          for t in ("samples", "rejects")])["row"].to_list()
        assert sorted(rows) == list(range(i, ROWS, 2))
    # Each job logged into its own directory of the one sweep dir; no job wrote a run of its own.
    sweep = two_jobs / "sweeps" / "attribute"
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "shard-00000-of-00002", "shard-00001-of-00002"]
    for i in (0, 1):
        log = (sweep / f"shard-{part_name(i, 2)}" / "segsft.log").read_text()
        assert f"part {part_name(i, 2)}" in log and f"part {part_name(1 - i, 2)}" not in log
    assert [p for p in two_jobs.rglob("attribution") if p != adir] == []


def test_select_reads_both_shards_and_every_row_once_as_one_process_made_it(two_jobs, one_process):
    out = run_pipeline("stage=select", f"run_dir={two_jobs}")
    assert out.returncode == 0, out.stderr[-3000:]
    seg2, smp2, rej2 = tables(two_jobs)
    seg1, smp1, rej1 = tables(one_process)
    # Every input row exactly once, in samples or rejects.
    rows = sorted(smp2["row"].to_list() + rej2["row"].to_list())
    assert rows == list(range(ROWS)) and smp2.height == 7 and rej2.height == 2
    assert smp2["sample_id"].is_unique().all()
    assert smp2.select("sample_id", "row").equals(smp1.select("sample_id", "row")) and rej2.equals(rej1)
    assert seg2.select("sample_id", "segment", "token_start", "token_end").equals(
        seg1.select("sample_id", "segment", "token_start", "token_end"))
    assert np.allclose(seg2["attr_sum"], seg1["attr_sum"], rtol=1e-5, atol=1e-7)
    assert np.allclose(smp2["attr_total"], smp1["attr_total"], rtol=1e-5, atol=1e-7)
    # select saw both parts: a mask row for every segment of every scored sample.
    masks = pl.read_parquet(next((two_jobs / "selection").glob("*/masks.parquet")))
    assert sorted(masks["sample_id"].unique()) == sorted(smp1["sample_id"])
    assert masks.height == seg1.height


def test_a_requeued_shard_resumes_its_own_part(tmp_path, corpus, tiny_model_dir, monkeypatch):
    """A shard stopped after its first committed chunk (preempted, timed out) is started again with
    the same overrides, as submitit's requeue does: it redoes none of it, and touches no other part."""
    from segsft.run.stages import run_stage
    from segsft.store.parts import PartWriter

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = compose_config("stage=attribute", *overrides(tmp_path, corpus, tiny_model_dir), "shard.index=1", "shard.count=2")
    flush = PartWriter.flush

    def preempted(self, buf):
        flush(self, buf)
        raise KeyboardInterrupt  # the scheduler's signal, after one chunk (flush_every=1: one sample)

    monkeypatch.setattr(PartWriter, "flush", preempted)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    partial = tmp_path / "attribution" / "_partial" / "00001-of-00002"
    assert len(list(partial.glob("samples-*.parquet"))) == 1
    monkeypatch.setattr(PartWriter, "flush", flush)
    result = run_stage(cfg)
    assert result["rows_in_shard"] == 4 and result["scored"] + result["rejected"] == 4
    names = sorted(p.name for p in (tmp_path / "attribution").iterdir() if not p.name.startswith("."))
    assert "part-00001-of-00002.done" in names and not any("00000-of-00002" in n for n in names)
    smp = pl.read_parquet(tmp_path / "attribution" / "samples-00001-of-00002.parquet")
    assert smp["sample_id"].is_unique().all() and sorted(smp["row"].to_list()) == [1, 5, 7]


# ---- evaluate in shards: every (problem, sample) once, the last shard tabulates -------------------

EVALUATE = ("stage=evaluate", "evaluate.engine=hf", "evaluate.benchmarks=[tiny]", "evaluate.max_new_tokens=4",
            "evaluate.batch_size=1", "evaluate.samples=2", "evaluate.limit=5", "evaluate.bootstrap=10")


def test_evaluate_in_two_shards_equals_one_process_and_resumes(tmp_path, tiny_model_dir, monkeypatch):
    from segsft.run.stages import run_stage

    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = lambda d, *x: compose_config(*EVALUATE, f"run_dir={d}", f"model.name_or_path={tiny_model_dir}", *x)  # noqa: E731
    assert run_stage(cfg(tmp_path / "s", "shard.index=1", "shard.count=2")) is None  # waits for shard 0
    results = run_stage(cfg(tmp_path / "s", "shard.index=0", "shard.count=2"))  # the last one tabulates
    assert results == tmp_path / "s" / "eval" / "results.parquet"
    chunks = sorted(p.name for p in (tmp_path / "s" / "eval").glob("generations-*.parquet"))
    assert {c[len("generations-"):][:14] for c in chunks} == {"00000-of-00002", "00001-of-00002"}
    run_stage(cfg(tmp_path / "one"))
    key = ["problem_id", "sample"]
    two = pl.read_parquet(tmp_path / "s" / "eval" / "generations-*.parquet").sort(key)
    one = pl.read_parquet(tmp_path / "one" / "eval" / "generations-*.parquet").sort(key)
    assert two.height == 10 and two.select(key).is_unique().all()
    assert two.select(*key, "output", "correct").equals(one.select(*key, "output", "correct"))
    assert pl.read_parquet(results)["n_problems"].to_list() == [5]

    # A rerun of a finished shard loads no model.
    def no_model(*a, **k):
        raise AssertionError("a finished shard loaded a model")

    monkeypatch.setattr("segsft.run.generation.load_engine", no_model)
    assert run_stage(cfg(tmp_path / "s", "shard.index=1", "shard.count=2")) == results


def test_the_contracts_attribute_shard_keys_feed_the_shard():
    # docs/method.md names attribution's shard keys attribute.shard / attribute.num_shards: they are
    # shard.index / shard.count's defaults, so either spelling gives the same rank and world.
    from segsft.config_schema import Settings

    a = Settings.of(compose_config("attribute.shard=1", "attribute.num_shards=3"))
    b = Settings.of(compose_config("shard.index=1", "shard.count=3"))
    assert rank_and_world(a.shard) == rank_and_world(b.shard) == (1, 3)
    assert rank_and_world(Settings.of(compose_config()).shard) == (0, 1)
    out = run_pipeline("stage=attribute", "run_dir=/nonexistent/r", "model.name_or_path=/nonexistent/model",
                       "attribute.shard=5", "attribute.num_shards=4")
    # ... and an error names the keys the user set.
    assert out.returncode == 2 and error_lines(out.stderr)[0].startswith(
        "error: attribute.shard=5 is outside attribute.num_shards=4")


def test_attributions_contract_keys_are_checked_and_named_in_a_sweep_and_for_an_unsharded_stage(tmp_path):
    out = run_pipeline("-m", "stage=attribute", f"run_dir={tmp_path}", "model.name_or_path=/nonexistent/model",
                       "attribute.shard=range(0,5)", "attribute.num_shards=4", "hydra/launcher=submitit_local")
    assert out.returncode == 2 and error_lines(out.stderr) == [
        "error: attribute.shard=4 is outside attribute.num_shards=4 (shards are 0..3): use -m "
        "attribute.shard='range(0,4)' attribute.num_shards=4, or raise attribute.num_shards"]
    assert not (tmp_path / "sweeps" / "attribute" / ".submitit").exists()  # no job submitted
    # A count without an index is named in the user's spelling, as in a single run.
    out = run_pipeline("-m", "stage=attribute", f"run_dir={tmp_path / 'n'}", "model.name_or_path=/nonexistent/model",
                       "attribute.num_shards=2", "hydra/launcher=submitit_local")
    (line,) = error_lines(out.stderr)
    assert out.returncode == 2 and line.startswith("error: attribute.num_shards=2 without attribute.shard"), line
    assert "shard.index" not in line and "shard.count" not in line.replace("attribute.num_shards", ""), line
    out = run_pipeline("stage=select", f"run_dir={tmp_path}", "attribute.shard=0", "attribute.num_shards=2")
    assert out.returncode == 2 and error_lines(out.stderr)[0].startswith(
        "error: attribute.shard/attribute.num_shards with stage=select: only stage=attribute")
    # A sweep of a stage that does not run in shards is refused before any job starts, too.
    out = run_pipeline("-m", "stage=select", f"run_dir={tmp_path / 's'}", "shard.index=range(0,2)", "shard.count=2",
                       "hydra/launcher=submitit_local")
    assert out.returncode == 2 and error_lines(out.stderr)[0].startswith("error: shard.index/shard.count with stage=select")
    assert not (tmp_path / "s" / "sweeps" / "select" / ".submitit").exists()
