"""Training: masked text carries no gradient, DeepSpeed ZeRO-2/3 under torchrun match a
single process, the saved model reloads, and a killed run resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf

from conftest import REPO, compose_config, make_traces, write_jsonl, write_masks

PROBE = [[5, 17, 42, 99, 3, 250, 7, 61]]

# Runs the stage like pipeline.py does; test-only callbacks record what the trained model
# in memory predicts on PROBE, or SIGKILL the process mid-training.
LAUNCHER = textwrap.dedent(
    """
    import json, os, signal, sys
    import numpy as np, torch
    from omegaconf import OmegaConf
    from transformers import TrainerCallback
    from segsft.finetune.stage import run
    from segsft.run.dist import end_process_after_group

    class KillAt(TrainerCallback):
        def __init__(self, step, path):
            self.step, self.path = step, path
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == self.step:
                if state.is_world_process_zero:
                    with open(self.path, "w") as fh:
                        json.dump(state.log_history, fh)
                os.kill(os.getpid(), signal.SIGKILL)

    class Probe(TrainerCallback):
        def __init__(self, ids, path):
            self.ids, self.path = ids, path
        def on_train_end(self, args, state, control, model=None, **kw):
            model.eval()
            with torch.no_grad():  # on every rank: ZeRO-3 gathers the shards collectively
                logits = model(input_ids=torch.tensor(self.ids)).logits
            if state.is_world_process_zero:
                np.save(self.path, logits.float().numpy())

    cfg = OmegaConf.create(json.loads(open(sys.argv[1]).read()))
    callbacks = []
    if os.environ.get("FT_KILL_AT_STEP"):
        callbacks.append(KillAt(int(os.environ["FT_KILL_AT_STEP"]), os.path.join(cfg.finetune_dir, "killed_history.json")))
    if os.environ.get("FT_PROBE"):
        callbacks.append(Probe(json.loads(os.environ["FT_PROBE"]), os.path.join(cfg.finetune_dir, "probe_logits.npy")))
    run(cfg, callbacks)
    # As the command does (segsft.run.cli): a rank ends past the interpreter's teardown, which
    # gloo's worker threads can abort after the model is written.
    end_process_after_group(0)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ft_setup(tmp_path_factory, tiny_model_dir):
    """4 short traces (one global batch of 2 ranks x 2), their masks, the launcher script."""
    d = tmp_path_factory.mktemp("ft")
    rows = make_traces(4, seed=3)
    write_jsonl(d / "corpus.jsonl", rows)
    # Every segment trained but the last (traces have >= 2 segments).
    write_masks(d / "sel", rows, train_of=lambda k, n: k < n - 1, split_mid=False)
    (d / "launch.py").write_text(LAUNCHER)
    return {"dir": d, "rows": rows, "model": tiny_model_dir}


def make_cfg(setup: dict, out: Path, corpus: Path | None = None, **finetune) -> dict:
    """The real config, resolved to a plain dict (launch.py ships it to the processes as JSON)."""
    cfg = compose_config("stage=finetune", f"data.path={corpus or setup['dir'] / 'corpus.jsonl'}",
                         f"model.name_or_path={setup['model']}", f"selection_dir={setup['dir'] / 'sel'}",
                         f"finetune_dir={out}", "finetune.learning_rate=1e-3", "finetune.warmup_ratio=0.0",
                         "finetune.save_steps=1000")
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg["finetune"].update(finetune)
    return cfg


def launch(setup: dict, cfg: dict, nproc: int = 1, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    path = Path(cfg["finetune_dir"]).with_suffix(".json")
    path.write_text(json.dumps(cfg))
    run_env = {**os.environ, "DS_ACCELERATOR": "cpu", "CUDA_VISIBLE_DEVICES": "",
               "OMP_NUM_THREADS": "1" if nproc > 1 else "2", "PYTHONPATH": str(REPO), **(env or {})}
    cmd = [sys.executable, str(setup["dir"] / "launch.py"), str(path)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *cmd[1:]]
    return subprocess.run(cmd, env=run_env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def history(out: Path) -> dict:
    return json.loads((out / "loss_history.json").read_text())


def probe_logits(model_dir: Path) -> np.ndarray:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor(PROBE)).logits.numpy()


def run_in_process(cfg: dict):
    from segsft.finetune.stage import run

    return run(OmegaConf.create(cfg))


@pytest.fixture(scope="module")
def reference_first_loss(ft_setup, tmp_path_factory):
    """First-step loss of one CPU process without DeepSpeed on the same global batch (4)."""
    out = tmp_path_factory.mktemp("ref") / "ft"
    proc = launch(ft_setup, make_cfg(ft_setup, out, deepspeed="none", max_steps=1, per_device_train_batch_size=4))
    assert proc.returncode == 0, proc.stderr[-4000:]
    return history(out)["first_loss"]


@pytest.mark.usefixtures("cpu_env")
def test_untrained_text_carries_no_gradient(ft_setup, tmp_path):
    from segsft.method.text import split_segments, resolve_pattern

    rows = ft_setup["rows"]
    pattern = resolve_pattern("default")

    def changed(segment_of) -> Path:
        """The corpus with the digits of one segment per trace replaced (token counts kept)."""
        out = []
        for r in rows:
            segs = split_segments(r["solution"], pattern)
            a, b = segs[segment_of(len(segs))]
            text = r["solution"][a:b].translate(str.maketrans("0123456789", "5678901234"))
            out.append({**r, "solution": r["solution"][:a] + text + r["solution"][b:]})
        return write_jsonl(tmp_path / f"c{len(list(tmp_path.iterdir()))}.jsonl", out)

    # ft_setup's masks leave the last segment of every trace untrained, and only it.
    base = make_cfg(ft_setup, tmp_path / "a", deepspeed="none", max_steps=1, per_device_train_batch_size=4,
                    bf16=False, gradient_checkpointing=False)  # fp32 on any device: exact comparisons
    a = run_in_process(base)
    b = run_in_process({**base, "finetune_dir": str(tmp_path / "b"), "data": {**base["data"], "path": str(changed(lambda n: n - 1))}})
    c = run_in_process({**base, "finetune_dir": str(tmp_path / "c"), "data": {**base["data"], "path": str(changed(lambda n: 0))}})
    ta, tb = (pq.read_table(r.train_tokens) for r in (a, b))
    ids_a, ids_b = ta.column("input_ids").to_pylist(), tb.column("input_ids").to_pylist()
    assert [len(x) for x in ids_a] == [len(x) for x in ids_b] and ids_a != ids_b  # same lengths, other text
    assert ta.column("labels").to_pylist() == tb.column("labels").to_pylist()
    la, lb, lc = (history(r.finetune_dir)["first_loss"] for r in (a, b, c))
    assert abs(la - lb) < 1e-6, (la, lb)
    # One optimizer step later the weights are identical too: no gradient from that text.
    sa, sb = a.trainer.model.state_dict(), b.trainer.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # Control: the same change inside a trained segment does move the loss.
    assert abs(la - lc) > 1e-4, (la, lc)


@pytest.mark.parametrize("zero", ["zero2", "zero3"])
def test_torchrun_deepspeed_matches_single_process_and_saves_a_loadable_model(ft_setup, tmp_path, zero, reference_first_loss):
    out = tmp_path / "ft"
    t0 = time.time()
    proc = launch(ft_setup, make_cfg(ft_setup, out, deepspeed=zero, max_steps=30), nproc=2,
                  env={"FT_PROBE": json.dumps(PROBE)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    h = history(out)
    losses = [s["loss"] for s in h["steps"]]
    assert h["global_step"] == 30 and len(losses) == 30
    assert abs(h["first_loss"] - reference_first_loss) < 1e-4, (h["first_loss"], reference_first_loss)
    assert np.mean(losses[-5:]) < losses[0] - 1.0, losses  # it learns (nats per trained token)
    in_memory = np.load(out / "probe_logits.npy")
    reloaded = probe_logits(out / "model")
    np.testing.assert_allclose(reloaded, in_memory, atol=1e-5, rtol=0)
    assert sorted(p.name for p in (out / "model").glob("*.safetensors")) == ["model.safetensors"]
    assert (out / "model" / "tokenizer.json").is_file() and (out / "train_tokens.parquet").is_file()
    print(f"{zero}: 2 ranks, 30 steps in {time.time() - t0:.1f}s; loss {losses[0]:.4f} -> {losses[-1]:.4f}")


def _resume_case(ft_setup, out: Path, nproc: int, **finetune) -> None:
    cfg = make_cfg(ft_setup, out, max_steps=25, save_steps=10, **finetune)
    killed = launch(ft_setup, cfg, nproc=nproc, env={"FT_KILL_AT_STEP": "15"})
    assert killed.returncode != 0 and not (out / "model").exists(), killed.stderr[-3000:]
    assert (out / "checkpoint-10" / "COMPLETE").is_file()
    before = {e["step"]: e["loss"] for e in json.loads((out / "killed_history.json").read_text()) if "loss" in e}
    assert max(before) == 14  # killed after step 15's update, before its loss was logged

    resumed = launch(ft_setup, cfg, nproc=nproc)
    assert resumed.returncode == 0, resumed.stderr[-6000:]
    h = history(out)
    assert h["resumed_from"].endswith("checkpoint-10")
    assert h["steps_run_by_this_launch"] == 15 and h["first_step_of_this_launch"] == 11
    assert h["global_step"] == 25 and [s["step"] for s in h["steps"]] == list(range(1, 26))
    after = {s["step"]: s["loss"] for s in h["steps"]}
    # Steps 11-14 redone from the checkpoint see the same batches and weights as before the kill.
    for step in range(1, 15):
        assert abs(after[step] - before[step]) < 1e-5, (step, after[step], before[step])
    assert (out / "checkpoint-20" / "COMPLETE").is_file() and (out / "model" / "model.safetensors").is_file()


def test_killed_run_resumes_from_its_last_complete_checkpoint(ft_setup, tmp_path):
    _resume_case(ft_setup, tmp_path / "ft", nproc=1, deepspeed="none")


def test_killed_zero3_run_resumes_from_its_last_complete_checkpoint(ft_setup, tmp_path):
    _resume_case(ft_setup, tmp_path / "ft", nproc=2, deepspeed="zero3")


def test_pipeline_entry_point_runs_the_stage(ft_setup, tmp_path):
    out = tmp_path / "ft"
    proc = subprocess.run(
        [sys.executable, "pipeline.py", "stage=finetune", f"run_dir={tmp_path}", f"data.path={ft_setup['dir'] / 'corpus.jsonl'}",
         f"model.name_or_path={ft_setup['model']}", f"selection_dir={ft_setup['dir'] / 'sel'}", f"finetune_dir={out}",
         "finetune.deepspeed=none", "finetune.max_steps=2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert history(out)["global_step"] == 2 and (out / "model" / "config.json").is_file()
