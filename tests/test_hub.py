"""Hub datasets as input: a saved or hub-layout directory reads as its JSONL would, `hub:org/name`
resolves through the same code (only `datasets.load_dataset` is mocked), ranks read disjoint
shards, the OpenR1 adapter finds the trace, and the attribution fingerprint names the dataset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest


from segsft.config_schema import Settings

from conftest import REPO, compose_config, make_traces, write_jsonl
from segsft.errors import PipelineError
from segsft.evaluate.benchmarks import load_benchmark
from segsft.store import hub
from segsft.store.corpus import read_corpus, read_problems
from segsft.store.fingerprint import fingerprint

FIELDS = {"id": "id", "question": "question", "solution": "solution", "answer": "answer"}
REAL_LOAD = datasets.load_dataset


@pytest.fixture(autouse=True)
def fresh_cache():
    hub.open_dataset.cache_clear()
    yield
    hub.open_dataset.cache_clear()


def corpus_rows() -> list[dict]:
    """Traces with a bad row (empty solution) and a later copy of a kept id."""
    rows = make_traces(9, seed=7)
    rows[3] = {**rows[3], "solution": ""}
    rows[6] = {**rows[6], "id": rows[1]["id"]}
    return rows


def hub_layout(d: Path, rows: list[dict], split: str = "train") -> Path:
    """The hub's layout: data/<split>-00000-of-00001.parquet."""
    (d / "data").mkdir(parents=True)
    datasets.Dataset.from_list(rows).to_parquet(str(d / "data" / f"{split}-00000-of-00001.parquet"))
    return d


def as_tuples(samples, rejects) -> tuple[list, list]:
    return ([(s.sample_id, s.question, s.solution, s.answer, s.row) for s in samples],
            [(r.sample_id, r.reason, r.row) for r in rejects])


@pytest.fixture
def mock_hub(monkeypatch, tmp_path):
    """`datasets.load_dataset` for hub ids served from local hub-layout directories (the only
    mocked boundary): records every call."""
    calls, dirs = [], {}

    def load(path, name=None, *a, **kw):
        calls.append((path, name, kw.get("revision"), kw.get("split")))
        return REAL_LOAD(str(dirs.get(path, path)), name, *a, **{k: v for k, v in kw.items() if k != "revision"})

    monkeypatch.setattr(datasets, "load_dataset", load)
    return calls, dirs


def test_a_saved_dataset_reads_exactly_as_its_jsonl(tmp_path):
    rows = corpus_rows()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    got = as_tuples(*read_corpus(tmp_path / "saved", FIELDS))
    want = as_tuples(*read_corpus(write_jsonl(tmp_path / "c.jsonl", rows), FIELDS))
    assert got == want
    samples, rejects = got
    # Independently of the JSONL reader: every row but the empty one and the later copy, as given.
    assert samples == [(r["id"], r["question"], r["solution"], r["answer"], i) for i, r in enumerate(rows) if i not in (3, 6)]
    assert [(sid, row) for sid, _, row in rejects] == [(rows[3]["id"], 3), (f"{rows[1]['id']}#row6", 6)]
    assert "empty field 'solution'" in rejects[0][1] and "duplicate sample_id" in rejects[1][1]


def test_the_hub_form_resolves_through_load_dataset(tmp_path, mock_hub):
    calls, dirs = mock_hub
    rows = corpus_rows()
    dirs["org/limo"] = hub_layout(tmp_path / "limo", rows)
    want = as_tuples(*read_corpus(write_jsonl(tmp_path / "c.jsonl", rows), FIELDS))
    assert as_tuples(*read_corpus(f"hub:{tmp_path / 'limo'}", FIELDS)) == want  # a local hub-layout dir
    assert as_tuples(*read_corpus("hub:org/limo@abc123", FIELDS)) == want
    assert as_tuples(*read_corpus("hub:org/limo::train", FIELDS)) == want
    assert calls == [(str(tmp_path / "limo"), None, None, "train"), ("org/limo", None, "abc123", "train"),
                     ("org/limo", None, None, "train")]


def test_problems_and_benchmarks_from_the_hub(tmp_path, mock_hub):
    calls, dirs = mock_hub
    probs = [{"id": f"p{i}", "problem": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    dirs["org/bench"] = hub_layout(tmp_path / "bench", probs, split="test")
    got, rejects = load_benchmark("hub:org/bench", {"id": "id", "question": "problem", "answer": "answer"}, None)
    assert [(p.problem_id, p.question, p.answer) for p in got] == [(r["id"], r["problem"], r["answer"]) for r in probs]
    assert rejects == [] and calls[-1] == ("org/bench", None, None, "test")  # benchmarks: the test split
    got, _ = read_problems("hub:org/bench:default:test", {"question": "problem", "answer": "answer"}, 2,
                           key="generate.problems")
    assert [p.answer for p in got] == ["1", "2"] and calls[-1] == ("org/bench", "default", None, "test")


def test_ranks_read_disjoint_shards_that_cover_every_row(tmp_path):
    rows = corpus_rows()
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    one = as_tuples(*read_corpus(tmp_path / "saved", FIELDS))
    parts = [as_tuples(*read_corpus(tmp_path / "saved", FIELDS, rank=r, world=3)) for r in range(3)]
    for r, (s, j) in enumerate(parts):
        assert {x[-1] for x in s + j} == set(range(r, len(rows), 3))  # each rank its own rows only
    assert sorted(x for s, _ in parts for x in s) == sorted(one[0])
    assert sorted(x for _, j in parts for x in j) == sorted(one[1])
    # A rank decodes only its rows: the rows it is handed are its own.
    assert [i for i, _ in hub.rows(tmp_path / "saved", ["id"], rank=1, world=3)] == list(range(1, len(rows), 3))
    assert [i for i, _ in hub.rows(tmp_path / "saved", ["id"], limit=5, rank=0, world=2)] == [0, 2, 4]


def test_the_openr1_adapter_takes_the_reasoning_of_the_trace(tmp_path):
    rows = [
        {"uuid": "u0", "problem": "What is 2 + 2?", "answer": "4", "solution": "reference text",
         "messages": [{"role": "user", "content": "What is 2 + 2?"},
                      {"role": "assistant", "content": "<think>\nWe add 2 and 2.\n\nWait, 4.\n</think>\nSo \\boxed{4}"}],
         "generations": ["<think>other</think>", "<think>x</think>"], "correctness_math_verify": [False, True]},
        {"uuid": "u1", "problem": "What is 3 + 3?", "answer": "6", "solution": "reference text",
         "messages": [{"role": "user", "content": "What is 3 + 3?"}],
         "generations": ["<think>wrong 5</think>", "<think>\nWe add 3 and 3: 6.\n</think> \\boxed{6}"],
         "correctness_math_verify": [False, True]},
    ]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "openr1"))
    samples, rejects = read_corpus(tmp_path / "openr1", FIELDS, adapter="openr1")
    assert rejects == []
    assert [(s.sample_id, s.question, s.solution, s.answer) for s in samples] == [
        ("u0", "What is 2 + 2?", "We add 2 and 2.\n\nWait, 4.", "4"), ("u1", "What is 3 + 3?", "We add 3 and 3: 6.", "6")]


def test_the_attribution_fingerprint_names_the_dataset(tmp_path, mock_hub):
    _, dirs = mock_hub
    dirs["org/limo"] = hub_layout(tmp_path / "limo", corpus_rows())
    fp = fingerprint(Settings.of(compose_config("data.path=hub:org/limo@v1.0", "model.name_or_path=m")), "float32", "p")
    expected = REAL_LOAD(str(tmp_path / "limo"), split="train")._fingerprint
    assert fp["corpus_dataset"] == {"dataset": "org/limo", "revision": "v1.0", "config": None, "split": "train",
                                    "rows": 9, "fingerprint": expected}
    assert "corpus_sha256" not in fp


def _pipeline(*ovr: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(cwd / "hf-cache")}
    return subprocess.run([sys.executable, str(REPO / "pipeline.py"), *ovr], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_bad_datasets_are_one_line_naming_the_dataset_and_what_is_missing(tmp_path, tiny_model_dir):
    from segsft.run.stages import run_stage

    datasets.Dataset.from_list([{"question": "q", "answer": "1", "trace": "t"}]).save_to_disk(str(tmp_path / "nosol"))
    hub_layout(tmp_path / "limo", corpus_rows())
    cases = {
        "nosol": (str(tmp_path / "nosol"), f"dataset {tmp_path / 'nosol'} has no field ['solution'] (its columns: "
                                           "['question', 'answer', 'trace']): set data.fields.solution to its column"),
        "split": (f"hub:{tmp_path / 'limo'}::validation",
                  f"dataset hub:{tmp_path / 'limo'}::validation could not be read (Unknown split"),
    }
    for name, (path, said) in cases.items():
        with pytest.raises(PipelineError) as e:
            run_stage(compose_config("stage=attribute", f"run_dir={tmp_path / name}", f"data.path={path}",
                                     f"model.name_or_path={tiny_model_dir}"))
        assert str(e.value).startswith(said) and "\n" not in str(e.value), (name, str(e.value))
    # From the command line, offline: an unknown hub id is one line and exit 2.
    proc = _pipeline("stage=attribute", f"run_dir={tmp_path / 'id'}", "data.path=hub:no-such-org/no-such-set",
                     f"model.name_or_path={tiny_model_dir}", cwd=tmp_path)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("error: dataset hub:no-such-org/no-such-set could not be read")


def test_a_hub_layout_directory_runs_attribute_select_finetune(tmp_path, tiny_model_dir, cpu_env):
    from segsft.run.stages import run_stage
    from segsft.store.layout import RunLayout

    rows = corpus_rows()[:5]
    hub_layout(tmp_path / "limo", rows)
    run = RunLayout(tmp_path / "run")
    common = (f"run_dir={run.run_dir}", f"data.path=hub:{tmp_path / 'limo'}", f"model.name_or_path={tiny_model_dir}")
    run_stage(compose_config("stage=attribute", *common, "attribute.rule=gauss_legendre", "attribute.steps=2",
                             "attribute.token_stats=false"))
    scored = pl.read_parquet(run.attribution.pattern("samples"))["sample_id"].sort().to_list()
    assert scored == sorted(r["id"] for i, r in enumerate(rows) if i != 3)  # row 3: empty solution
    run_stage(compose_config("stage=select", *common))
    res = run_stage(compose_config("stage=finetune", *common, "finetune.deepspeed=none", "finetune.max_steps=1",
                                   "finetune.save_steps=1000"))
    tokens = pl.read_parquet(res.train_tokens)
    assert sorted(tokens["sample_id"].to_list()) == scored and res.steps_run == 1


def test_a_hub_that_cannot_be_reached_says_one_line_not_a_warning_per_retry(monkeypatch, caplog, capfd):
    import logging

    from segsft.store import hub

    http = logging.getLogger("huggingface_hub.utils._http")

    def unreachable(*a, **kw):
        for attempt in range(1, 6):  # what huggingface_hub's http backoff logs before it gives up
            http.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD ...")
            http.warning("Retrying in %ds [Retry %d/5].", 2 ** attempt, attempt)
        raise ConnectionError("Couldn't reach 'org/set' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    hub.open_dataset.cache_clear()
    with caplog.at_level(logging.INFO), pytest.raises(PipelineError, match=r"^dataset hub:org/set could not be read "
                                                                           r"\(Couldn't reach 'org/set' on the Hub"):
        hub.open_dataset("hub:org/set")
    assert not [r for r in caplog.records if r.name.startswith("huggingface_hub")]
    assert "Retrying" not in capfd.readouterr().err
    assert http.level == logging.NOTSET  # as it was: other downloads keep their warnings
