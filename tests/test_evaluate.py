"""stage=evaluate / stage=generate: grading with math-verify, the generation engine, resume, results."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import polars as pl

import pytest

from conftest import REPO, compose_config, needs_shared_data, shared_rows, write_jsonl
from segsft.method.grading import grade

MATCH = [
    ("\\boxed{0.5}", "\\frac{1}{2}"), ("\\boxed{\\frac{1}{2}}", "0.5"), ("\\boxed{27.0}", "27"),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"), ("\\boxed{x = 3}", "3"), ("\\boxed{[1, 2)}", "[1,2)"),
    ("\\boxed{(0, \\infty)}", "(0,\\infty)"), ("\\boxed{10\\text{ cm}}", "10"), ("\\boxed{30^\\circ}", "30"),
    ("\\boxed{50\\%}", "50"), ("\\boxed{50}", "50\\%"), ("\\boxed{\\sqrt{2}/2}", "\\frac{\\sqrt{2}}{2}"),
    ("I think </think> The answer is \\boxed{204}.", "204"), ("\\boxed{C}", "C"), ("The answer is (B).", "B"),
]
MISMATCH = [("\\boxed{3}", "4"), ("\\boxed{0.51}", "\\frac{1}{2}"), ("\\boxed{[1, 2]}", "[1,2)"), ("\\boxed{51\\%}", "50"),
            ("early \\boxed{5} </think> so finally \\boxed{6}", "5"), ("\\boxed{B}", "C")]


@pytest.mark.parametrize("output,answer", MATCH)
def test_grader_matches_equal_answers(output, answer):
    g = grade(output, answer)
    assert g.correct and g.verdict == "match", g


@pytest.mark.parametrize("output,answer", MISMATCH)
def test_grader_rejects_different_answers(output, answer):
    g = grade(output, answer)
    assert not g.correct and g.verdict == "mismatch", g


def test_grader_says_why_nothing_was_graded():
    g = grade("I am still thinking about", "5", "stop")
    assert (g.pred, g.correct, g.verdict) == (None, False, "no_answer")
    g = grade("I am still thinking about", "5", "length")
    assert (g.pred, g.correct, g.verdict) == (None, False, "truncated")
    assert grade("thinking \\boxed{7} ... </think> no box after", "7").pred == "7"  # falls back to the whole output


@needs_shared_data
def test_grader_agrees_with_the_papers_on_aime24():
    rows = shared_rows()
    same = sum(grade(r["solution"] + "</think>" + r["summary"], r["answer"]).correct == bool(r["correct"]) for r in rows)
    assert same >= 29 and len(rows) == 30


#: stage=evaluate on the tiny benchmark with HF generate, a few tokens each.
EVALUATE = ("stage=evaluate", "evaluate.engine=hf", "evaluate.benchmarks=[tiny]", "evaluate.max_new_tokens=6",
            "evaluate.batch_size=3")


def test_k_samples_deterministic_and_results_equal_a_recount(tmp_path, tiny_model_dir):
    from segsft.evaluate.stage import run

    out = run(compose_config(*EVALUATE, f'run_dir={tmp_path / "a"}', f"model.name_or_path={tiny_model_dir}",
                             "evaluate.samples=3", "evaluate.limit=5"))
    gens = pl.read_parquet(tmp_path / "a" / "eval" / "generations-*.parquet")
    assert gens.height == 15 and gens.select("problem_id", "sample").is_unique().all()
    assert sorted(gens.group_by("problem_id").len()["len"].to_list()) == [3] * 5
    run(compose_config(*EVALUATE, f'run_dir={tmp_path / "b"}', f"model.name_or_path={tiny_model_dir}",
                       "evaluate.samples=3", "evaluate.limit=5"))
    again = pl.read_parquet(tmp_path / "b" / "eval" / "generations-*.parquet")
    key = ["problem_id", "sample"]
    assert gens.sort(key).select("output", "output_tokens").equals(again.sort(key).select("output", "output_tokens"))
    res = pl.read_parquet(out).row(0, named=True)
    assert (res["n_problems"], res["samples"]) == (5, 3)
    assert res["accuracy"] == pytest.approx(gens["correct"].cast(pl.Float64).mean())
    assert res["mean_output_tokens"] == pytest.approx(gens["output_tokens"].mean())
    assert res["share_truncated"] == pytest.approx((gens["finish_reason"] == "length").mean())
    assert res["accuracy_ci_low"] <= res["accuracy"] <= res["accuracy_ci_high"]


def test_results_and_bootstrap_on_a_known_table():
    from segsft.evaluate.results import results, side_by_side

    rows = [{"model": m, "benchmark": "b", "problem_id": f"p{i}", "sample": s, "output": "", "output_tokens": 10 * (i + 1),
             "finish_reason": "length" if i == 0 else "stop", "answer": "1", "pred": None,
             "correct": (i + s + (m == "tuned")) % 2 == 0, "verdict": "x"}
            for m in ("base", "tuned") for i in range(4) for s in range(2)]
    table = results(pl.DataFrame(rows), bootstrap=200)
    base = table.filter(pl.col("model") == "base").row(0, named=True)
    assert base["accuracy"] == 0.5 and base["mean_output_tokens"] == 25.0 and base["share_truncated"] == 0.25
    text = side_by_side(table)
    assert "base" in text and "tuned" in text and "+0.0/+0%" in text


def test_a_killed_evaluation_resumes_without_duplicates(tmp_path, tiny_model_dir):
    args = [sys.executable, "pipeline.py", "stage=evaluate", f"run_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}",
            "evaluate.engine=hf", "evaluate.benchmarks=[tiny]", "evaluate.max_new_tokens=12", "evaluate.samples=2",
            "evaluate.chunk_problems=1", "evaluate.batch_size=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "eval").glob("generations-*.parquet"))) < 2 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    chunks = len(list((tmp_path / "eval").glob("generations-*.parquet")))
    assert 2 <= chunks < 10, "the run must be killed part-way"
    out = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"{10 - chunks} problems to do ({chunks} already done)" in out.stdout + out.stderr
    gens = pl.read_parquet(tmp_path / "eval" / "generations-*.parquet")
    assert gens.height == 20 and gens.select("problem_id", "sample").is_unique().all()
    # Other sampling settings are refused in one line, nothing lost.
    out = subprocess.run(args + ["evaluate.temperature=0.9"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "temperature: 0.6 there, 0.9 now" in out.stderr and "Traceback" not in out.stderr


@needs_shared_data
def test_grading_a_generations_file_loads_no_model(tmp_path):
    from segsft.evaluate.stage import run

    path = write_jsonl(tmp_path / "outs.jsonl", [{"id": r["id"], "answer": r["answer"], "benchmark": "aime24", "model": "r1-7b",
                                                  "output": r["solution"] + "</think>" + r["summary"]}
                                                 for r in shared_rows()])
    cfg = compose_config("stage=evaluate", f"run_dir={tmp_path}", "model.name_or_path=/nonexistent/model",
                         f"evaluate.generations={path}")
    res = pl.read_parquet(run(cfg)).row(0, named=True)
    assert (res["model"], res["benchmark"], res["n_problems"]) == ("r1-7b", "aime24", 30)
    assert res["accuracy"] == pytest.approx(18 / 30)
    gens = pl.read_parquet(tmp_path / "eval" / "generations-*.parquet")
    assert set(gens["verdict"]) <= {"match", "mismatch"} and gens["pred"].null_count() == 0


def test_grading_a_file_rejects_bad_rows_with_their_reason_and_a_regrade_replaces_its_rows(tmp_path):
    from segsft.evaluate.stage import run

    good = {"id": "p1", "answer": "4", "output": "so </think> \\boxed{4}", "model": "m", "benchmark": "b"}
    rows = [good, {**good, "id": "p2", "sample": "abc"}, {**good, "id": "p3", "output_tokens": "many"},
            {**good, "id": "p4", "sample": [1]}, {**good, "id": "p5", "sample": 2**40}, {**good, "id": "p6", "answer": float("nan")},
            {**good, "id": "p7", "sample": "2", "output_tokens": 12.0}]
    path = tmp_path / "outs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")  # json writes NaN for the float
    cfg = compose_config("stage=evaluate", f"run_dir={tmp_path}", f"evaluate.generations={path}")
    run(cfg)
    gens = pl.read_parquet(tmp_path / "eval" / "generations-*.parquet").sort("problem_id")
    assert gens.select("problem_id", "sample", "output_tokens").rows() == [("p1", 0, 0), ("p7", 2, 12)]
    rej = pl.read_parquet(tmp_path / "eval" / "rejects.parquet").sort("row")
    assert rej["sample_id"].to_list() == ["p2", "p3", "p4", "p5", "p6"] and rej["row"].to_list() == [1, 2, 3, 4, 5]  # 0-based, as every rejects table
    assert rej["reason"].to_list() == ["sample='abc' is not a whole number in [0, 2^31)",
                                       "output_tokens='many' is not a whole number in [0, 2^31)",
                                       "sample=[1] is not a whole number in [0, 2^31)",
                                       f"sample={2**40} is not a whole number in [0, 2^31)", "answer is NaN"]
    assert set(rej["source"]) == {str(path)}
    # Every input row is accounted for: graded or rejected.
    assert gens.height + rej.height == len(rows)
    # The same file, corrected and graded again: its rows replace the first grading's, no duplicates.
    path.write_text(json.dumps({**good, "output": "so </think> \\boxed{5}"}) + "\n")
    res = pl.read_parquet(run(cfg)).row(0, named=True)
    gens = pl.read_parquet(tmp_path / "eval" / "generations-*.parquet")
    assert gens.select("problem_id", "correct").rows() == [("p1", False)] and res["accuracy"] == 0
    assert pl.read_parquet(tmp_path / "eval" / "rejects.parquet").height == 0
    # Another file's rows sit beside them.
    other = write_jsonl(tmp_path / "other.jsonl", [{**good, "model": "m2"}])
    res = pl.read_parquet(run(compose_config("stage=evaluate", f"run_dir={tmp_path}", f"evaluate.generations={other}")))
    assert sorted(res["model"].to_list()) == ["m", "m2"]


def test_a_binary_parquet_column_is_graded_as_its_text_and_a_non_utf8_value_is_rejected(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from segsft.evaluate.stage import run

    path = tmp_path / "outs.parquet"
    # An unused binary column that is not text (an image) rejects nothing.
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "answer": ["4", "4", "4"],
                             "output": pa.array([b"so </think> \\boxed{4}", b"\\boxed{\xff4}", b"\\boxed{5}"],
                                                pa.binary()),
                             "img": pa.array([b"\x89PNG\xff"] * 3, pa.binary())}), path)
    run(compose_config("stage=evaluate", f"run_dir={tmp_path}", f"evaluate.generations={path}"))
    gens = pl.read_parquet(tmp_path / "eval" / "generations-*.parquet").sort("problem_id")
    # Graded as the text the bytes hold, not as "b'...'" (which would never match 4).
    assert gens.select("problem_id", "output", "correct").rows() == [("p1", "so </think> \\boxed{4}", True),
                                                                     ("p3", "\\boxed{5}", False)]
    rej = pl.read_parquet(tmp_path / "eval" / "rejects.parquet")
    assert rej.select("sample_id", "row", "reason").rows() == [
        ("p2", 1, "field 'output' is binary and not UTF-8 text: write it as UTF-8 text")]


def test_binary_text_columns_of_a_problem_set_or_corpus_are_read_as_text(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segsft.store.corpus import read_corpus, read_problems

    # A saved dataset (datasets' binary feature): questions and answers are their text.
    datasets.Dataset.from_dict({"id": ["a", "b"], "question": [b"What is 2+2?", b"\xff?"], "answer": [b"4", b"5"]},
                               features=datasets.Features({"id": datasets.Value("string"),
                                                           "question": datasets.Value("binary"),
                                                           "answer": datasets.Value("binary")})
                               ).save_to_disk(str(tmp_path / "probs"))
    rows, rejects = read_problems(str(tmp_path / "probs"), {"id": "id"}, None, "evaluate.benchmarks")
    assert [(r.problem_id, r.question, r.answer) for r in rows] == [("a", "What is 2+2?", "4")]
    assert [r.reason for r in rejects] == ["row 1: field 'question' is binary and not UTF-8 text: write it as UTF-8 text"]
    # A Parquet corpus with binary text columns: trained as text.
    path = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": ["s1"], "question": pa.array([b"Q?"], pa.binary()),
                             "solution": pa.array([b"Think.\n\nDone."], pa.binary()),
                             "answer": pa.array([b"7"], pa.binary())}), path)
    (sample,), rejected = read_corpus(path, {})
    assert rejected == []
    assert (sample.question, sample.solution, sample.answer) == ("Q?", "Think.\n\nDone.", "7")


def test_an_id_that_is_not_utf8_rejects_its_row_under_a_stable_id_never_a_bytes_repr(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segsft.evaluate.stage import run
    from segsft.store.corpus import read_corpus, read_problems

    why = "field 'id' is binary and not UTF-8 text: write it as UTF-8 text"
    ids = pa.array([b"p1", b"\xfe"], pa.binary())
    # A generations file: the good row graded under its text id, the other rejected as hex:fe.
    outs = tmp_path / "outs.parquet"
    pq.write_table(pa.table({"id": ids, "answer": ["4", "4"], "output": ["\\boxed{4}", "\\boxed{4}"]}), outs)
    run(compose_config("stage=evaluate", f"run_dir={tmp_path}", f"evaluate.generations={outs}"))
    gens = pl.read_parquet(tmp_path / "eval" / "generations-*.parquet")
    assert gens["problem_id"].to_list() == ["p1"]
    rej = pl.read_parquet(tmp_path / "eval" / "rejects.parquet")
    assert rej.select("sample_id", "row", "reason").rows() == [("hex:fe", 1, why)]
    # A corpus and a problem set: the same.
    corpus = tmp_path / "corpus.parquet"
    pq.write_table(pa.table({"id": ids, "question": ["Q?", "Q?"], "solution": ["A.\n\nB.", "A.\n\nB."],
                             "answer": ["7", "7"]}), corpus)
    samples, rejects = read_corpus(corpus, {"id": "id"})
    assert [s.sample_id for s in samples] == ["p1"]
    assert [(r.sample_id, r.reason) for r in rejects] == [("hex:fe", f"row 1: {why}")]
    # A JSONL corpus whose id is a list: refused as the problem and generations readers refuse it.
    listed = write_jsonl(tmp_path / "corpus.jsonl", [{"id": ["a", 1], "question": "Q?", "solution": "A.\n\nB.",
                                                      "answer": "7"}])
    samples, rejects = read_corpus(listed, {"id": "id"})
    assert samples == [] and [r.reason for r in rejects] == ["row 0: field 'id' is a list, not text"]
    probs = tmp_path / "probs.parquet"
    pq.write_table(pa.table({"id": ids, "question": ["Q?", "R?"], "answer": ["7", "8"]}), probs)
    rows, rejects = read_problems(str(probs), {"id": "id"}, None, "evaluate.benchmarks")
    assert [r.problem_id for r in rows] == ["p1"]
    assert [(r.sample_id, r.reason) for r in rejects] == [("hex:fe", f"row 1: {why}")]


def test_a_missing_mapped_answer_column_is_named_as_the_user_mapped_it(tmp_path):
    from segsft.errors import PipelineError
    from segsft.evaluate.stage import run

    path = write_jsonl(tmp_path / "outs.jsonl", [{"id": "p1", "answer": "4", "output": "\\boxed{4}"}])
    cfg = compose_config("stage=evaluate", f"run_dir={tmp_path}", f"evaluate.generations={path}",
                         "evaluate.fields.answer=ans")
    with pytest.raises(PipelineError, match=r"first: row 0: no 'ans' \(evaluate.fields.answer\)\): give id, 'ans' "):
        run(cfg)


def test_graded_files_never_shadow_each_other_and_damaged_records_are_named(tmp_path, monkeypatch):
    from segsft.errors import PipelineError
    from segsft.evaluate.stage import run
    from segsft.run.generation import check_settings
    from segsft.store.layout import GenerationLayout

    good = {"id": "p1", "answer": "4", "output": "so </think> \\boxed{4}"}
    (tmp_path / "d1").mkdir()
    (tmp_path / "d2").mkdir()
    a = write_jsonl(tmp_path / "d1" / "out.jsonl", [good, {**good, "id": "p2", "sample": "x"}])
    b = write_jsonl(tmp_path / "d2" / "out.jsonl", [{**good, "output": "so </think> \\boxed{5}"}])
    grade = lambda f: run(compose_config("stage=evaluate", f"run_dir={tmp_path / 'r'}", f"evaluate.generations={f}"))
    grade(a)
    # The same file under another spelling of its path: its rows and rejects are replaced, not added.
    monkeypatch.chdir(tmp_path / "d1")
    grade("out.jsonl")
    eval_dir = tmp_path / "r" / "eval"
    assert pl.read_parquet(eval_dir / "generations-*.parquet").height == 1
    assert pl.read_parquet(eval_dir / "rejects.parquet")["source"].to_list() == [str(a.resolve())]
    # Another file with the same (model, benchmark, problem_id, sample): refused, naming the first's rows.
    with pytest.raises(PipelineError, match=r"1 of its rows have the \(model, benchmark, problem_id, sample\) of rows "
                                            r"already in .*generations-graded-.*\(e\.g\. out/out/p1/0\): set eval_dir="):
        grade(b)
    assert pl.read_parquet(eval_dir / "generations-*.parquet")["correct"].to_list() == [True]
    # A damaged rejects table is rebuilt with a warning; a damaged chunk or settings record is named.
    (eval_dir / "rejects.parquet").write_bytes(b"junk")
    grade(a)
    assert pl.read_parquet(eval_dir / "rejects.parquet").height == 1
    (chunk,) = eval_dir.glob("generations-*.parquet")
    chunk.write_bytes(b"junk")
    with pytest.raises(PipelineError, match=f"{chunk} is not a readable Parquet file"):
        grade(b)
    layout = GenerationLayout(tmp_path / "g")
    layout.dir.mkdir()
    layout.settings.write_text("{cut")
    cfg = compose_config("stage=evaluate", f"run_dir={tmp_path / 'r'}")
    with pytest.raises(PipelineError, match=f"{layout.settings} is not a settings record this pipeline wrote"):
        check_settings(layout, cfg.evaluate, "eval_dir", {})


def test_generate_keeps_the_chosen_sample_and_rejects_the_rest():
    from segsft.generate.stage import choose

    rows = [{"sample": 0, "correct": True, "finish_reason": "stop", "output": "a long one </think> x", "output_tokens": 50},
            {"sample": 1, "correct": True, "finish_reason": "stop", "output": "short </think> x", "output_tokens": 20},
            {"sample": 2, "correct": False, "finish_reason": "stop", "output": "wrong </think> y", "output_tokens": 5},
            {"sample": 3, "correct": True, "finish_reason": "length", "output": "cut \\boxed{x}", "output_tokens": 99}]
    assert [r["sample"] for r in choose(rows, "shortest_correct")] == [1]
    assert [r["sample"] for r in choose(rows, "first_correct")] == [0]
    assert [r["sample"] for r in choose(rows, "all_correct")] == [0, 1]
    assert choose(rows[2:], "shortest_correct") == []


def test_generate_writes_a_corpus_this_pipeline_reads(tmp_path, tiny_model_dir, monkeypatch):
    """With the grader forced to accept, every problem keeps its shortest sample; the corpus is
    read back by the attribution's reader with the ground truth as answer."""
    import segsft.method.grading as grading
    from segsft.store.corpus import read_corpus
    from segsft.generate.stage import run

    monkeypatch.setattr(grading, "grade", lambda out, ans, fin="stop", ch=None: grading.Grade("x", True, "match"))
    monkeypatch.setattr("segsft.generate.stage.choose", lambda rows, keep: [min(rows, key=lambda r: (r["output_tokens"], r["sample"]))])
    probs = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "question": "What is 1+1?", "answer": "2"},
                                               {"id": "b", "question": "What is 2+2?", "answer": "4"}, {"id": "c", "question": "x"}])
    cfg = compose_config("stage=generate", f"run_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}",
                         f"generate.problems={probs}", "generate.samples=3", "generate.max_new_tokens=5", "generate.engine=hf")
    corpus = run(cfg)
    samples, rejects = read_corpus(corpus, {"id": "id"})
    assert [s.sample_id for s in samples] == ["a", "b"] and [s.answer for s in samples] == ["2", "4"]
    rej = pl.read_parquet(tmp_path / "generated" / "rejects.parquet")
    assert rej["sample_id"].to_list() == ["c"] and "missing or empty field 'answer'" in rej["reason"][0]
    gens = pl.read_parquet(tmp_path / "generated" / "generations-*.parquet")
    assert gens.height == 6  # every sample of every problem, with its grade


@pytest.mark.parametrize("args,needle", [
    (["stage=evaluate", "evaluate.benchmarks=[nosuch]"], "'nosuch' is neither a shipped benchmark"),
    (["stage=generate", "generate.problems=NOANSWERS"], "has no field ['answer'] in any row"),
])
def test_bad_input_is_one_line(tmp_path, tiny_model_dir, args, needle):
    probs = write_jsonl(tmp_path / "q.jsonl", [{"id": "a", "question": "q"}])
    args = [a.replace("NOANSWERS", str(probs)) for a in args]
    out = subprocess.run([sys.executable, "pipeline.py", f"run_dir={tmp_path}", f"model.name_or_path={tiny_model_dir}", *args], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert needle in out.stderr, out.stderr[-2000:]


def test_config_errors_of_evaluate_are_listed_together(tmp_path):
    from segsft.evaluate import check_config

    errs = check_config(compose_config("stage=evaluate", f"run_dir={tmp_path}", "evaluate.samples=0",
                                       "evaluate.models=[/no/such/model]", "evaluate.top_p=0", "evaluate.engine=fast",
                                       "evaluate.temperature=0"))
    text = "\n".join(errs)
    for needle in ("evaluate.samples=0: use an integer in [1, 1024]", "evaluate.models='/no/such/model' does not exist",
                   "evaluate.top_p=0.0: use a number in (0, 1]", "evaluate.engine='fast'"):
        assert needle in text, text
    errs = check_config(compose_config("stage=evaluate", f"run_dir={tmp_path}", "evaluate.temperature=0",
                                       "evaluate.samples=4"))
    assert any("greedy decoding gives one output per problem" in e for e in errs)


@pytest.mark.gpu
def test_vllm_engine_generates_k_samples(tmp_path):
    pytest.importorskip("vllm")
    from segsft.evaluate.stage import run

    cfg = compose_config("stage=evaluate", f"run_dir={tmp_path}", "evaluate.engine=vllm", "evaluate.benchmarks=[tiny]",
                         "evaluate.samples=2", "evaluate.max_new_tokens=64", "evaluate.gpu_memory_utilization=0.5")
    gens = pl.read_parquet(Path(run(cfg)).parent / "generations-*.parquet")
    assert gens.height == 20 and gens.select("problem_id", "sample").is_unique().all()


def test_results_do_not_depend_on_the_order_of_the_generations():
    from segsft.evaluate.results import results

    # Problems of distinct accuracies (0, 1/3, 2/3, 1) and a handful of resamples: any other
    # order of the problems would draw other ones.
    rows = [{"model": "m", "benchmark": "b", "problem_id": f"p{i:02d}", "sample": k, "output_tokens": 10 + i,
             "finish_reason": "stop", "correct": k < i % 4} for i in range(12) for k in range(3)]
    a = results(pl.DataFrame(rows), bootstrap=5)
    b = results(pl.DataFrame(rows[::-1]), bootstrap=5)
    assert a.equals(b) and a["accuracy_ci_low"][0] < a["accuracy"][0] < a["accuracy_ci_high"][0]


def test_a_second_writer_of_a_generation_part_is_refused_in_one_line(tmp_path):
    # Generation chunks take the store's part lock, as attribution parts do: two processes on
    # one shard would write the same chunks twice.
    from segsft.config_schema import EvaluateConf, ModelConf
    from segsft.run.generation import generate_graded
    from segsft.store.layout import GenerationLayout
    from segsft.store.parts import PartBusy, part_lock

    lay = GenerationLayout(tmp_path)
    with part_lock(lay, "00001-of-00002"):
        with pytest.raises(PartBusy, match=r"part 00001-of-00002 of .* is being written by PID \d+ on host"):
            generate_graded(ModelConf(name_or_path="unused"), "m", [("b", [])], 1, EvaluateConf(), lay, 1, 2)
    # Released: the same call goes on (nothing to do, no model loaded).
    assert generate_graded(ModelConf(name_or_path="unused"), "m", [("b", [])], 1, EvaluateConf(), lay, 1, 2) == 0


def test_evaluation_refuses_a_fine_tuning_run_without_its_model(tmp_path):
    """A killed finetune leaves its records but no model/: evaluating would quietly leave the tuned
    model out, so the stage stops with one line; a finished run or evaluate.models go ahead."""
    from segsft.config_schema import Settings
    from segsft.errors import PipelineError
    from segsft.evaluate.stage import run, unfinished_finetune

    ft = tmp_path / "ft"
    ft.mkdir()
    (ft / "run_config.json").write_text("{}")
    common = ("stage=evaluate", f"finetune_dir={ft}", f"eval_dir={tmp_path / 'eval'}")
    with pytest.raises(PipelineError) as e:
        run(compose_config(*common))
    assert str(e.value).startswith(f"finetune_dir={ft} holds a fine-tuning run without its model")
    assert not (tmp_path / "eval").exists()  # nothing loaded, nothing written
    assert unfinished_finetune(Settings.of(compose_config(*common, "evaluate.models=[base]"))) is None
    (ft / "model").mkdir()
    (ft / "model" / "config.json").write_text("{}")
    assert unfinished_finetune(Settings.of(compose_config(*common))) is None
    assert unfinished_finetune(Settings.of(compose_config("stage=evaluate", f"finetune_dir={tmp_path / 'none'}"))) is None
