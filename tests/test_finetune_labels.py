"""Finetune examples: labels exact to the token, accounting of every row, config checks."""

from __future__ import annotations

import bisect
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hydra.errors import ConfigCompositionException

from conftest import (REPO, compose_config, SHARED_DATA, hand_segments, make_traces, needs_shared_data, shared_rows, write_jsonl,
                      mark_selection_finished, write_masks)
from segsft.store.corpus import read_corpus
from segsft.store.shipped import conf_dir
from segsft.finetune import IGNORE_INDEX, check_config
from segsft.finetune.checkpoints import MARKER, latest_complete, remove_incomplete
from segsft.finetune.collate import PaddingCollator
from segsft.finetune.examples import build_examples, step8_sequence, write_train_tokens
from segsft.finetune.masks import MasksError, read_masks
from segsft.method.text import build_sequence, resolve_pattern

FIELDS = {"id": "id", "question": "question", "solution": "solution", "answer": "answer"}
PATTERN = resolve_pattern("default")


def expected_labels(tokenizer, row: dict, train_spans: list[tuple[int, int]]) -> tuple[list[int], list[int], int]:
    """Independently of segsft: ids and labels straight from the tokenizer's offsets."""
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": row["question"] + "\nPlease reason step by step, and put your final answer within \\boxed{}."}],
        tokenize=False, add_generation_prompt=True)
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    enc = tokenizer(row["solution"], add_special_tokens=False, return_offsets_mapping=True)
    starts = sorted(a for a, _ in train_spans)
    ends = {a: b for a, b in train_spans}
    labels = [IGNORE_INDEX] * len(p_ids)
    for tid, (c0, _) in zip(enc["input_ids"], enc["offset_mapping"]):
        i = bisect.bisect_right(starts, c0) - 1
        labels.append(tid if i >= 0 and c0 < ends[starts[i]] else IGNORE_INDEX)
    return p_ids + enc["input_ids"], labels, len(p_ids)


def straddlers(tokenizer, row: dict) -> int:  # with the masks of write_masks
    """Tokens that start in one segment and end in the next (where the rule matters)."""
    enc = tokenizer(row["solution"], add_special_tokens=False, return_offsets_mapping=True)
    cuts = [a for a, _ in hand_segments(row["solution"], True)][1:]
    return sum(any(a < c < b for c in cuts) for a, b in enc["offset_mapping"])


@needs_shared_data
def test_labels_are_the_tokens_whose_first_char_is_trained(tokenizer, tmp_path):
    rows = shared_rows(4)
    masks = read_masks(write_masks(tmp_path / "sel", rows))
    samples, rejects = read_corpus(SHARED_DATA, FIELDS)
    samples = [s for s in samples if s.sample_id in {r["id"] for r in rows}]
    examples, report = build_examples(tokenizer, samples, [], "selected", masks, max_length=0)
    assert report.kept == 4 and not report.dropped
    n_straddle = 0
    for ex, row in zip(examples, rows):
        ids, labels, n_prompt = expected_labels(tokenizer, row, masks[row["id"]].train_spans())
        assert ex.input_ids.tolist() == ids
        assert ex.labels.tolist() == labels
        assert (ex.labels[:n_prompt] == IGNORE_INDEX).all()
        learned = ex.labels != IGNORE_INDEX
        assert 0 < learned.sum() < len(ex.labels) - n_prompt  # a real mix, not all or nothing
        assert (ex.labels[learned] == ex.input_ids[learned]).all()
        n_straddle += straddlers(tokenizer, row)
    assert n_straddle > 0, "no token straddles a segment boundary: the first-character rule went untested"


@needs_shared_data
def test_truncation_keeps_the_rule_and_drops_samples_left_without_loss(tokenizer, tmp_path):
    rows = shared_rows(2)
    # Only the last segment is trained: a cut before it leaves nothing to learn.
    masks = read_masks(write_masks(tmp_path / "sel", rows, train_of=lambda k, n: k in (1, n - 1)))
    samples, _ = read_corpus(SHARED_DATA, FIELDS)
    samples = [s for s in samples if s.sample_id in {r["id"] for r in rows}]
    full, _ = build_examples(tokenizer, samples, [], "selected", masks, max_length=0)
    for ex, row in zip(full, rows):
        ids, labels, n_prompt = expected_labels(tokenizer, row, masks[row["id"]].train_spans())
        first_learned = int(np.flatnonzero(ex.labels != IGNORE_INDEX)[0])
        for cut in (first_learned + 1, first_learned + 57, len(ids) - 3):
            got, rep = build_examples(tokenizer, [s for s in samples if s.sample_id == row["id"]], [], "selected", masks, cut)
            assert rep.truncated == 1 and len(got[0].input_ids) == cut
            assert got[0].input_ids.tolist() == ids[:cut] and got[0].labels.tolist() == labels[:cut]
        got, rep = build_examples(tokenizer, [s for s in samples if s.sample_id == row["id"]], [], "selected", masks, first_learned)
        assert got == [] and rep.counts() == {"no_trainable_tokens": 1}
        assert "max_length" in rep.dropped[0]["reason"]


def test_full_mode_learns_every_trace_token_and_never_the_prompt(tokenizer, tmp_path):
    rows = make_traces(5)
    samples, _ = read_corpus(write_jsonl(tmp_path / "c.jsonl", rows), FIELDS)
    examples, report = build_examples(tokenizer, samples, [], "full", None, max_length=0)
    assert report.kept == 5
    for ex, s in zip(examples, samples):
        seq = build_sequence(tokenizer, s.question, s.solution, PATTERN)
        assert ex.input_ids.tolist() == seq.input_ids.tolist()  # the same tokens as attribution
        assert (ex.labels[: seq.n_prompt] == IGNORE_INDEX).all()
        assert ex.labels[seq.n_prompt:].tolist() == ex.input_ids[seq.n_prompt:].tolist()
    assert report.learned_tokens == sum(len(e.input_ids) - step8_sequence(tokenizer, s.question, s.solution)[1]
                                        for e, s in zip(examples, samples))


def test_full_mode_trains_the_samples_of_the_selection_by_default(tokenizer, tmp_path):
    """finetune.full_scope=selection: full and selected runs train the same sample set."""
    rows = make_traces(5)
    samples, _ = read_corpus(write_jsonl(tmp_path / "c.jsonl", rows), FIELDS)
    masks = read_masks(write_masks(tmp_path / "sel", rows[:3], train_of=lambda k, n: k == 0))
    full, rep = build_examples(tokenizer, samples, [], "full", masks, max_length=0)
    selected, _ = build_examples(tokenizer, samples, [], "selected", masks, max_length=0)
    assert [e.sample_id for e in full] == [e.sample_id for e in selected] == [r["id"] for r in rows[:3]]
    assert rep.counts() == {"not_in_selection": 2} and rep.corpus_rows == 5
    assert all((e.labels[e.labels != IGNORE_INDEX].size > s.labels[s.labels != IGNORE_INDEX].size) for e, s in zip(full, selected))


def test_every_corpus_row_is_accounted_for(tokenizer, tmp_path):
    rows = make_traces(6)
    masks_rows = [dict(r) for r in rows[:4]]
    masks_rows[3] = {**rows[3], "solution": rows[3]["solution"] + " extra"}  # masks made from other text
    masks_rows.append({**rows[0], "id": "ghost"})  # in masks, not in the corpus
    sel = write_masks(tmp_path / "sel", masks_rows, train_of=lambda k, n: k == 0 or (n > 1 and k == n - 1))
    # Sample 2: nothing trained.
    t = pq.read_table(sel / "masks.parquet").to_pylist()
    for r in t:
        if r["sample_id"] == rows[2]["id"]:
            r["train"] = False
    pq.write_table(pa.Table.from_pylist(t, schema=pq.read_schema(sel / "masks.parquet")), sel / "masks.parquet")
    corpus = write_jsonl(tmp_path / "c.jsonl", [*rows, "{not json", {"id": "x", "question": "q"}])
    samples, rejects = read_corpus(corpus, FIELDS)
    examples, report = build_examples(tokenizer, samples, rejects, "selected", read_masks(sel), max_length=0)
    assert report.corpus_rows == 8
    assert report.counts() == {"corpus_reject": 2, "not_in_masks": 2, "mask_mismatch": 1, "no_trainable_tokens": 1}
    assert report.kept == len(examples) == 2
    assert report.kept + len(report.dropped) == report.corpus_rows
    assert report.masks_not_in_corpus == 1
    write_train_tokens(tmp_path / "train_tokens.parquet", examples)
    back = pq.read_table(tmp_path / "train_tokens.parquet")
    assert str(back.schema.field("input_ids").type) == "list<element: int32>"
    assert back.column("sample_id").to_pylist() == [e.sample_id for e in examples]
    assert back.column("labels").to_pylist()[1] == examples[1].labels.tolist()


def test_masks_table_errors_say_what_to_do(tmp_path):
    with pytest.raises(MasksError, match="run the select stage first"):
        read_masks(tmp_path)
    pq.write_table(pa.table({"sample_id": ["a"], "segment": [0]}), tmp_path / "masks.parquet")
    mark_selection_finished(tmp_path)
    with pytest.raises(MasksError, match=r"lacks columns \['char_start', 'char_end', 'train'\]: it is not a masks "
                                         r"table of the select stage: set selection_dir to the output directory "
                                         r"of a select stage$"):
        read_masks(tmp_path)


def test_padding_collator_pads_labels_with_ignore_index():
    batch = PaddingCollator(pad_id=7)([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]},
                                       {"input_ids": [4], "labels": [-100]}])
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 7, 7]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [-100, -100, -100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


#: stage=finetune on the sample corpus (nothing is loaded: the tests check the config).
FINETUNE = ("stage=finetune", f"data.path={REPO / 'segsft' / 'data' / 'sample_traces.jsonl'}", "model.name_or_path=m",
            "selection_dir=/nonexistent", "finetune_dir=out")


def test_default_config_is_the_papers_and_valid(tmp_path):
    ft = compose_config(*FINETUNE).finetune
    assert (ft.num_train_epochs, ft.learning_rate, ft.lr_scheduler_type, ft.warmup_ratio) == (10, 3e-5, "cosine", 0.05)
    assert (ft.per_device_train_batch_size, ft.max_length, ft.max_grad_norm) == (2, 16384, 1.0)
    assert (ft.bf16, ft.gradient_checkpointing, ft.packing, ft.liger, ft.report_to) == ("auto", "auto", False, False, "none")
    assert check_config(compose_config(*FINETUNE, "finetune.mode=full", "finetune.full_scope=corpus")) == []
    # By default full mode trains the selection's samples (a fair ablation): it needs the masks too.
    errs = check_config(compose_config(*FINETUNE, "finetune.mode=full"))
    assert len(errs) == 1 and "masks.parquet does not exist" in errs[0] and "finetune.full_scope=corpus" in errs[0]
    for name in ("zero2", "zero3"):
        ds = json.loads((conf_dir() / "deepspeed" / f"{name}.json").read_text())
        assert ds["zero_optimization"]["stage"] == int(name[-1])
        assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["gradient_clipping"] == "auto"
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_config_errors_are_reported_all_at_once():
    errs = check_config(compose_config(*FINETUNE, "finetune.mode=half", "finetune.deepspeed=zero9", "finetune.max_steps=0",
                                       "finetune.save_total_limit=1", "finetune.bf16=maybe", "finetune.warmup_ratio=1.5",
                                       "finetune.per_device_train_batch_size=0", "finetune.full_scope=all"))
    text = "\n".join(errs)
    for needle in ("finetune.mode='half'", "finetune.deepspeed='zero9'", "finetune.max_steps=0",
                   "finetune.save_total_limit=1", "finetune.bf16='maybe'", "finetune.warmup_ratio=1.5",
                   "finetune.per_device_train_batch_size=0", "finetune.full_scope='all'"):
        assert needle in text, needle
    assert len(errs) == 8
    with pytest.raises(ConfigCompositionException, match="typo_key"):  # Hydra refuses an unknown key
        compose_config(*FINETUNE, "finetune.typo_key=1")
    errs = check_config(compose_config(*FINETUNE, "finetune.mode=selected"))
    assert len(errs) == 1 and "masks.parquet does not exist" in errs[0] and "finetune.mode=full" in errs[0]


def test_packing_and_liger_need_their_packages():
    import importlib.util

    errs = check_config(compose_config(*FINETUNE, "finetune.mode=full", "finetune.full_scope=corpus", "finetune.packing=true",
                                       "finetune.liger=true"))
    if importlib.util.find_spec("flash_attn") is None:
        assert any("finetune.packing=true needs flash-attention" in e for e in errs)
    if importlib.util.find_spec("liger_kernel") is None:
        assert any("finetune.liger=true needs Liger kernels" in e for e in errs)


def test_resume_picks_the_newest_complete_checkpoint(tmp_path):
    for step, done in ((10, True), (20, True), (30, False)):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if done:
            (d / MARKER).write_text("{}")
    (tmp_path / "checkpoint-x").mkdir()
    assert latest_complete(tmp_path) == tmp_path / "checkpoint-20"
    assert remove_incomplete(tmp_path) == [tmp_path / "checkpoint-30"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10", "checkpoint-20", "checkpoint-x"]
    assert latest_complete(tmp_path / "missing") is None


def test_checkpoints_of_other_settings_are_refused_through_the_store(tmp_path):
    # The fine-tune's resume check is the store's one fingerprint check (segsft.store.fingerprint).
    import dataclasses

    from segsft.config_schema import FinetuneConf
    from segsft.finetune.settings import FinetuneError
    from segsft.finetune.stage import _check_resumable
    from segsft.store.layout import FinetuneLayout

    lay, s = FinetuneLayout(tmp_path), FinetuneConf()
    fp = {"mode": "selected", "max_length": 256}
    _check_resumable(tmp_path, fp, s)  # a fresh directory: the fingerprint is stored
    assert json.loads(lay.fingerprint.read_text()) == fp
    # No complete checkpoint yet: other settings take the directory over.
    (tmp_path / "checkpoint-2").mkdir()
    _check_resumable(tmp_path, {**fp, "max_length": 128}, s)
    assert json.loads(lay.fingerprint.read_text())["max_length"] == 128
    (tmp_path / "checkpoint-2" / "COMPLETE").write_text("{}\n")
    with pytest.raises(FinetuneError, match=r"holds checkpoints made with other settings \(max_length: 128 there, "
                                            r"256 now\): use a new finetune_dir"):
        _check_resumable(tmp_path, fp, s)
    # resume=false starts over: the checkpoints go, and the fingerprint is this run's.
    _check_resumable(tmp_path, fp, dataclasses.replace(s, resume=False))
    assert not (tmp_path / "checkpoint-2").exists() and json.loads(lay.fingerprint.read_text()) == fp


def test_the_masks_corpus_check_compares_datasets_too(tmp_path):
    # A dataset corpus is recorded by its identity (not a SHA-256): the check compares that, and a
    # file in its place is refused in one line rather than crashing on the dict.
    from segsft.finetune.provenance import check_corpus_matches
    from segsft.finetune.settings import FinetuneError
    from segsft.store.io import write_json
    from segsft.store.layout import RunLayout

    ident = {"dataset": "org/limo", "revision": "v1.0", "config": None, "split": "train", "rows": 9, "fingerprint": "f"}
    write_json(RunLayout(tmp_path).attribution.fingerprint, {"corpus_dataset": ident})
    check_corpus_matches(tmp_path / "sel", tmp_path, "hub:org/limo@v1.0", dict(ident), allow=False)
    with pytest.raises(FinetuneError, match=r"data.path=c.jsonl \(sha256 0123456789ab\) is not the corpus the masks .* "
                                            r"were made from \(dataset org/limo@v1.0 in "):
        check_corpus_matches(tmp_path / "sel", tmp_path, "c.jsonl", "0123456789abcdef", allow=False)
    with pytest.raises(FinetuneError, match=r"\(dataset org/limo@v2\) is not the corpus"):
        check_corpus_matches(tmp_path / "sel", tmp_path, "hub:org/limo@v2", {**ident, "revision": "v2"}, allow=False)
