"""stage=export: the TRL and axolotl datasets carry exactly the labels of train_tokens.parquet."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from conftest import REPO, compose_config, make_traces, write_jsonl, write_masks
from segsft.finetune import IGNORE_INDEX
from segsft.finetune.examples import build_examples, write_train_tokens
from segsft.finetune.masks import read_masks
from segsft.run.stages import run_stage
from segsft.store.corpus import read_corpus
from segsft.store.layout import RunLayout

FIELDS = {"id": "id", "question": "question", "solution": "solution", "answer": "answer"}


@pytest.fixture
def exported(tokenizer, tmp_path):
    """A finetune_dir whose train_tokens.parquet the finetune stage's own writer made from a
    selection (segments cut mid-word: tokens straddle them), and its export."""
    rows = make_traces(6, seed=5)
    corpus = write_jsonl(tmp_path / "corpus.jsonl", rows)
    sel = write_masks(tmp_path / "sel", rows)
    samples, rejects = read_corpus(str(corpus), FIELDS, None)
    examples, _ = build_examples(tokenizer, samples, rejects, "selected", read_masks(sel), 0)
    run = RunLayout(tmp_path / "run")
    write_train_tokens(run.finetune.train_tokens, examples)
    outs = run_stage(compose_config("stage=export", f"run_dir={run.run_dir}", f"selection_dir={sel}"))
    want = pq.read_table(run.finetune.train_tokens).to_pylist()
    return run.finetune.export, outs, want


def test_export_loss_mask_equals_train_tokens_labels_token_by_token(exported):
    from datasets import load_dataset

    out, outs, want = exported
    assert outs == out.outputs() and all(p.is_file() for p in outs.values())
    axo = load_dataset(str(out.axolotl.parent), split="train")
    trl = load_dataset(str(out.trl.parent), split="train")
    assert axo.column_names == ["input_ids", "attention_mask", "labels"]  # axolotl: exactly these
    assert len(axo) == len(trl) == len(want) == 6
    masked = learned = 0
    for a, t, w in zip(axo, trl, want):
        assert a["input_ids"] == t["input_ids"] == w["input_ids"]
        assert a["labels"] == t["labels"] == w["labels"]
        assert a["attention_mask"] == [1] * len(w["input_ids"])
        assert t["sample_id"] == w["sample_id"]
        for tok, lab, cm in zip(w["input_ids"], w["labels"], t["completion_mask"], strict=True):
            assert cm == (lab != IGNORE_INDEX) and (lab in (IGNORE_INDEX, tok))
            masked, learned = masked + (not cm), learned + cm
    assert masked > 0 and learned > 0  # both kinds of token are there to compare


@pytest.mark.parametrize("drop_labels", [False, True], ids=["labels", "completion_mask"])
def test_trls_own_preparation_and_collator_give_our_labels(exported, tiny_model_dir, cpu_env, tmp_path, drop_labels):
    # TRL >= 1.0 takes the labels column as it is; without it (older TRL's path) it builds
    # them from completion_mask. Either way its collator must hand the model our labels.
    pytest.importorskip("trl")
    import torch
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    out, _, want = exported
    ds = load_dataset(str(out.trl.parent), split="train")
    if drop_labels:
        ds = ds.remove_columns("labels")
    args = SFTConfig(output_dir=str(tmp_path / "trl"), completion_only_loss=True, max_length=None, report_to="none",
                     use_cpu=True, per_device_train_batch_size=len(want), dataset_num_proc=None)
    trainer = SFTTrainer(model=tiny_model_dir, args=args, train_dataset=ds)
    batch = next(iter(trainer.get_train_dataloader()))
    n = max(len(w["input_ids"]) for w in want)
    expect = torch.full((len(want), n), IGNORE_INDEX)
    ids = torch.zeros((len(want), n), dtype=torch.long)
    for i, w in enumerate(want):
        expect[i, : len(w["labels"])] = torch.tensor(w["labels"])
        ids[i, : len(w["input_ids"])] = torch.tensor(w["input_ids"])
    # The dataloader may reorder rows: match them by their ids.
    got = {tuple(r[m.bool()].tolist()): lab for r, m, lab in zip(batch["input_ids"], batch["attention_mask"], batch["labels"])}
    assert len(got) == len(want)
    for i, w in enumerate(want):
        assert torch.equal(got[tuple(w["input_ids"])], expect[i])


def test_export_of_a_gone_run_is_one_line_naming_the_directory(tmp_path):
    gone = tmp_path / "gone-run"
    proc = subprocess.run([sys.executable, "pipeline.py", "stage=export", f"run_dir={gone}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    ft = RunLayout(gone).finetune
    assert len(errors) == 1 and f"{ft.dir} does not exist" in errors[0] and "Traceback" not in proc.stderr
    assert not ft.export.dir.exists()


def _train_tokens(path, table) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(table, bytes):
        path.write_bytes(table)
    else:
        pq.write_table(table, path)


@pytest.mark.parametrize("case,said", [
    ("garbled", "is not a readable Parquet file (Parquet magic bytes not found"),
    ("empty", "is not a readable Parquet file (Parquet file size is 0 bytes)"),
    ("no rows", "holds no rows: nothing to export"),
    ("strings", "columns of other types than segsft writes (Failed to parse string: 'y'"),
    ("too big", "columns of other types than segsft writes (Integer value 1099511627776 not in range"),
    ("null row", "null values in {'input_ids': 1, 'labels': 1} (column: rows), which segsft never writes"),
])
def test_export_refuses_a_train_tokens_file_it_cannot_trust_naming_it(tmp_path, case, said):
    import pyarrow as pa

    from segsft.errors import PipelineError
    from segsft.export.stage import run
    from segsft.schemas import TRAIN_TOKENS_SCHEMA as S

    good = pa.table({"sample_id": ["a", "b"], "input_ids": [[1, 2, 3], [4, 5]], "labels": [[-100, 2, 3], [-100, 5]]}, schema=S)
    table = {"garbled": b"PAR1 not parquet", "empty": b"", "no rows": good.slice(0, 0),
             "strings": pa.table({"sample_id": ["a"], "input_ids": [["x", "y"]], "labels": [["x", "y"]]}),
             "too big": pa.table({"sample_id": ["a"], "input_ids": [[1, 2**40]], "labels": [[-100, 2**40]]}),
             "null row": pa.table({"sample_id": ["a", "b"], "input_ids": [[1, 2], None], "labels": [[-100, 2], None]}, schema=S),
             }[case]
    ft = RunLayout(tmp_path / "r").finetune
    _train_tokens(ft.train_tokens, table)
    with pytest.raises(PipelineError) as e:
        run(compose_config("stage=export", f"run_dir={tmp_path / 'r'}"))
    assert str(e.value).startswith(f"{ft.train_tokens}") and said in str(e.value)
    assert str(e.value).endswith("rerun stage=finetune into a new finetune_dir") and "\n" not in str(e.value)
    assert not ft.export.dir.exists()


@pytest.mark.parametrize("record", ["{garbage", "[1, 2]"])
def test_an_unreadable_fingerprint_leaves_the_sources_out_of_the_card_only(tmp_path, record, caplog):
    import pyarrow as pa

    from segsft.export.stage import run
    from segsft.schemas import TRAIN_TOKENS_SCHEMA as S

    ft = RunLayout(tmp_path / "r").finetune
    _train_tokens(ft.train_tokens, pa.table({"sample_id": ["a"], "input_ids": [[1, 2]], "labels": [[-100, 2]]}, schema=S))
    ft.fingerprint.write_text(record)
    out = run(compose_config("stage=export", f"run_dir={tmp_path / 'r'}"))
    assert pq.read_table(ft.export.trl).column("completion_mask").to_pylist() == [[0, 1]]
    assert "- mode:" not in ft.export.card.read_text()
    assert [r.message for r in caplog.records if r.levelname == "WARNING"][0].startswith(f"export: {ft.fingerprint} is not")
    assert out
