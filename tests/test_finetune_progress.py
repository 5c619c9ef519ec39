"""Training visible: a progress bar with tokens per second on the main process, and
finetune.report_to=tensorboard writing the logged losses where the layout says."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from conftest import compose_config, make_traces, write_jsonl, write_masks
from segsft.run.stages import run_stage
from segsft.store.layout import FinetuneLayout


@pytest.mark.usefixtures("cpu_env")
def test_progress_bar_and_tensorboard_logs(tmp_path, tiny_model_dir, capfd):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = make_traces(4, seed=11)
    write_jsonl(tmp_path / "corpus.jsonl", rows)
    write_masks(tmp_path / "sel", rows, train_of=lambda k, n: k < n - 1, split_mid=False)
    ft = FinetuneLayout(tmp_path / "ft")
    # 4 examples, 2 per step, 2 steps: every example exactly once.
    run_stage(compose_config("stage=finetune", f"run_dir={tmp_path}", f"data.path={tmp_path / 'corpus.jsonl'}",
                             f"model.name_or_path={tiny_model_dir}", f"selection_dir={tmp_path / 'sel'}",
                             f"finetune_dir={ft.dir}", "finetune.deepspeed=none", "finetune.max_steps=2",
                             "finetune.per_device_train_batch_size=2", "finetune.save_steps=1000",
                             "finetune.report_to=tensorboard"))
    err = capfd.readouterr().err
    history = json.loads(ft.loss_history.read_text())
    # The tokens the bar counts are the real tokens of the sequences trained: their lengths.
    lengths = [len(ids) for ids in pq.read_table(ft.train_tokens)["input_ids"].to_pylist()]
    assert history["tokens_seen_this_launch"] == sum(lengths)
    assert history["tokens_per_second"] > 0
    assert "finetune: 100%" in err and "2/2" in err and "tok/s" in err

    events = EventAccumulator(str(ft.tensorboard))
    events.Reload()
    losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in losses] == [s["step"] for s in history["steps"]] == [1, 2]
    assert [v for _, v in losses] == pytest.approx([s["loss"] for s in history["steps"]], rel=1e-6)


def test_report_to_needs_its_package(monkeypatch):
    from segsft.finetune import settings

    monkeypatch.setattr(settings, "has_module", lambda name: name != "wandb")
    cfg = compose_config("stage=select", "finetune.report_to=wandb", "model.name_or_path=m")
    assert any(e.startswith("finetune.report_to=wandb needs the wandb package") for e in settings.check_config(cfg))
