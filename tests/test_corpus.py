"""Reading corpora: every row is a sample or a reject; file-level problems stop at once."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from segsft.errors import PipelineError

from conftest import write_jsonl
from segsft.store.corpus import CorpusError, read_corpus

FIELDS = {"id": "id", "question": "question", "solution": "solution", "answer": "answer"}


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    ok = {"id": "a", "question": "q", "solution": "s", "answer": "1"}
    path = write_jsonl(
        tmp_path / "c.jsonl",
        [ok, '{"id": "b", "question": "q", "solution": ', {"id": "c", "question": "q", "solution": "s"},
         {"id": "d", "question": "q", "solution": "  ", "answer": "2"}, {"id": "a", "question": "q2", "solution": "s", "answer": "1"},
         {"question": "q", "solution": "s", "answer": 7}, "[1, 2]"],
    )
    samples, rejects = read_corpus(path, FIELDS)
    assert len(samples) + len(rejects) == 7
    assert [s.sample_id for s in samples][0] == "a"
    assert samples[1].answer == "7" and samples[1].sample_id.startswith("h")
    reasons = {r.row: r.reason for r in rejects}
    assert "invalid JSON" in reasons[1]
    assert "missing field 'answer'" in reasons[2]
    assert "empty field 'solution'" in reasons[3]
    assert "duplicate sample_id 'a'" in reasons[4]
    # The duplicate's reject carries its own id, never the kept row's (resume goes by id).
    assert [r.sample_id for r in rejects if r.row == 4] == ["a#row4"]
    assert "not an object" in reasons[6]
    assert all(r.source == str(path) for r in rejects)


def test_invalid_json_names_the_line_and_column_an_editor_shows(tmp_path):
    ok = '{"id": "a", "question": "q", "solution": "s", "answer": "1"}'
    bad = '{"id": "é€b", "question": "q" "solution": "s", "answer": "1"}'  # missing comma; multibyte before it
    (tmp_path / "c.jsonl").write_text(ok + "\n" + bad + "\n", encoding="utf-8")
    _, rejects = read_corpus(tmp_path / "c.jsonl", FIELDS)
    col = bad.index('"solution"') + 1  # 1-based, in characters
    assert len(rejects) == 1 and rejects[0].row == 1
    assert f"invalid JSON at line 2, column {col} (Expecting ',' delimiter)" in rejects[0].reason


def test_derived_ids_are_stable(tmp_path):
    rows = [{"question": "q", "solution": f"s{i}", "answer": "1"} for i in range(3)]
    a, _ = read_corpus(write_jsonl(tmp_path / "a.jsonl", rows), FIELDS)
    b, _ = read_corpus(write_jsonl(tmp_path / "b.jsonl", rows[::-1]), FIELDS)
    assert {s.sample_id for s in a} == {s.sample_id for s in b}
    assert len({s.sample_id for s in a}) == 3


def test_parquet_with_custom_field_names(tmp_path):
    t = pa.table({"uid": ["x", "y"], "problem": ["q1", "q2"], "thinking": ["t1", ""], "gt": ["1", "2"]})
    pq.write_table(t, tmp_path / "c.parquet")
    samples, rejects = read_corpus(tmp_path / "c.parquet", {"id": "uid", "question": "problem", "solution": "thinking", "answer": "gt"})
    assert [s.sample_id for s in samples] == ["x"] and samples[0].solution == "t1"
    assert [r.sample_id for r in rejects] == ["y"] and "empty field 'thinking'" in rejects[0].reason


def test_missing_file_and_wrong_fields_stop_at_once(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "nope.jsonl", FIELDS)
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": "q", "response": "s"}])
    with pytest.raises(CorpusError) as e:
        read_corpus(path, FIELDS)
    msg = str(e.value)
    assert str(path) in msg and "'prompt'" in msg and "'response'" in msg and "data.fields" in msg


def test_invalid_utf8_is_rejected_not_repaired(tmp_path):
    path = tmp_path / "c.jsonl"
    good = b'{"id": "a", "question": "q", "solution": "s", "answer": "1"}\n'
    bad = b'{"id": "b", "question": "q", "solution": "caf\xe9", "answer": "1"}\n'
    path.write_bytes(good + bad)
    samples, rejects = read_corpus(path, FIELDS)
    assert [s.sample_id for s in samples] == ["a"]
    assert len(rejects) == 1 and "invalid UTF-8 at byte" in rejects[0].reason and rejects[0].row == 1


def test_bom_null_nan_float_answers_and_duplicates_of_a_rejected_row(tmp_path, caplog):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ok = {"question": "q", "solution": "s"}
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"id": "a", **ok, "answer": "1"}).encode() + b"\n")
    samples, rejects = read_corpus(p, {"id": "id"})
    assert [s.sample_id for s in samples] == ["a"] and rejects == []  # the BOM does not cost the first row

    pq.write_table(pa.table({"id": ["x", "y", "z", "w"], "question": ["q"] * 4, "solution": ["s"] * 4,
                             "answer": [204.0, float("nan"), None, 2.5]}), tmp_path / "f.parquet")
    with caplog.at_level("INFO"):
        samples, rejects = read_corpus(tmp_path / "f.parquet", {"id": "id"})
    assert {s.sample_id: s.answer for s in samples} == {"x": "204", "w": "2.5"}
    reasons = {r.sample_id: r.reason for r in rejects}
    assert "field 'answer' is NaN" in reasons["y"] and "null field 'answer'" in reasons["z"]
    assert "1 answer(s) given as integral floats" in caplog.text

    # The first copy of an id is rejected, the second is valid: the id is in one table only.
    d = write_jsonl(tmp_path / "dup.jsonl", [{"id": "k", "question": "q", "solution": "", "answer": "1"},
                                             {"id": "k", **ok, "answer": "1"}])
    samples, rejects = read_corpus(d, {"id": "id"})
    assert [r.sample_id for r in rejects] == ["k"] and [s.sample_id for s in samples] == ["k#row1"]


def test_reject_ids_do_not_depend_on_how_the_path_is_spelled(tmp_path, monkeypatch):
    p = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "question": "q", "solution": "s", "answer": "1"}, '{"broken": '])
    monkeypatch.chdir(tmp_path)
    a = read_corpus("c.jsonl", {})[1][0].sample_id
    b = read_corpus(p.resolve(), {})[1][0].sample_id
    assert a == b


def test_empty_file_and_directory_get_their_own_message(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(CorpusError, match="is empty"):
        read_corpus(tmp_path / "e.jsonl", {})
    (tmp_path / "nothing").mkdir()  # a directory is read as a dataset: this one holds none
    with pytest.raises(PipelineError, match=f"^dataset directory {tmp_path / 'nothing'} could not be read") as e:
        read_corpus(tmp_path / "nothing", {})
    # A local directory gets no hub advice (login, network): what it must hold instead.
    assert "huggingface-cli" not in str(e.value) and "save_to_disk" in str(e.value)


def test_a_file_that_is_not_parquet_is_one_clear_error(tmp_path):
    p = tmp_path / "c.parquet"
    p.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(CorpusError, match="is not a readable Parquet file .*magic bytes"):
        read_corpus(p, {})
