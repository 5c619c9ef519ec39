"""Each rank's vLLM engine on its own GPU (segsft.run.dist.vllm_device_env / pin_engine_devices),
and the model revision passed to vLLM."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO
from segsft.config_schema import ModelConf
from segsft.errors import PipelineError
from segsft.run import dist
from segsft.run.dist import vllm_device_env


@pytest.fixture
def launcher(monkeypatch):
    """A fresh process as far as the device choice goes: the launcher's list not yet read."""
    monkeypatch.setattr(dist, "_launcher_visible", [])
    for k in ("CUDA_VISIBLE_DEVICES", "LOCAL_RANK", "VLLM_WORKER_MULTIPROC_METHOD", "VLLM_ENABLE_V1_MULTIPROCESSING",
              "VLLM_USE_V1"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_without_a_list_the_rank_is_the_gpu_index():
    assert [vllm_device_env(r, None) for r in range(3)] == ["0", "1", "2"]
    assert vllm_device_env(7, None, count=8) == "7"
    assert vllm_device_env(1, None, per_rank=2, count=4) == "2,3"  # tensor parallel: a pair per rank


def test_a_slurm_list_is_indexed_by_local_rank():
    # Slurm (or the user) gave this node's processes GPUs 4-7: LOCAL_RANK r gets the r-th of them.
    assert [vllm_device_env(r, "4,5,6,7") for r in range(4)] == ["4", "5", "6", "7"]
    assert vllm_device_env(1, "4, 5 ,6,7", per_rank=2) == "6,7"
    uuids = "GPU-aaaa,GPU-bbbb"
    assert vllm_device_env(1, uuids) == "GPU-bbbb"  # UUIDs and MIG ids are kept as written


@pytest.mark.parametrize("rank,visible,per_rank,count,shown", [
    (2, "4,5", 1, None, "'4,5'"), (1, "3", 1, None, "'3'"), (1, "0,1,2", 2, None, "'0,1,2'"),
    (8, None, 1, 8, "unset"), (0, "", 1, None, "''"),
])
def test_a_rank_past_the_list_is_one_line(rank, visible, per_rank, count, shown):
    with pytest.raises(PipelineError) as e:
        vllm_device_env(rank, visible, per_rank, count)
    text = str(e.value)
    assert f"LOCAL_RANK={rank}" in text and f"CUDA_VISIBLE_DEVICES={shown}" in text and "\n" not in text, text


def test_pinning_sets_the_ranks_gpu_once_and_again_for_the_next_engine(launcher):
    launcher.setenv("CUDA_VISIBLE_DEVICES", "2,3,5")
    launcher.setenv("LOCAL_RANK", "2")
    assert dist.pin_engine_devices() == "5"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5" and os.environ["VLLM_WORKER_MULTIPROC_METHOD"] == "spawn"
    # The next model's engine in the same process: chosen from the launcher's list, not from "5".
    assert dist.pin_engine_devices() == "5" and dist.launcher_visible_devices() == "2,3,5"


def test_pinning_checks_the_rank_against_the_gpu_count_when_unset(launcher):
    launcher.setattr(torch.cuda, "device_count", lambda: 2)
    launcher.setenv("LOCAL_RANK", "1")
    assert dist.pin_engine_devices() == "1"
    launcher.setattr(dist, "_launcher_visible", [])
    launcher.delenv("CUDA_VISIBLE_DEVICES")
    launcher.setenv("LOCAL_RANK", "2")
    with pytest.raises(PipelineError, match=r"LOCAL_RANK=2 has no GPU of its own: CUDA_VISIBLE_DEVICES=unset gives 2"):
        dist.pin_engine_devices()


def test_an_engine_in_a_process_with_cuda_started_is_refused_off_its_first_gpu(launcher):
    # stage=all or attribute ran first: this process's CUDA keeps its devices; an engine run in
    # this very process would take its cuda:0, another rank's GPU.
    launcher.setattr(torch.cuda, "is_initialized", lambda: True)
    launcher.setattr(torch.cuda, "empty_cache", lambda: None)
    launcher.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    launcher.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    launcher.setenv("LOCAL_RANK", "1")
    with pytest.raises(PipelineError, match="LOCAL_RANK=1: CUDA is already initialised in this process"):
        dist.pin_engine_devices()
    # The V1 default (engine core in a spawned process) sees the new list: accepted.
    launcher.delenv("VLLM_ENABLE_V1_MULTIPROCESSING")
    assert dist.pin_engine_devices() == "1"


def test_a_bad_local_rank_is_one_line(launcher):
    launcher.setenv("LOCAL_RANK", "two")
    with pytest.raises(PipelineError, match="LOCAL_RANK='two' is not an integer >= 0"):
        dist.local_rank()


def test_auto_picks_hf_without_vllm_and_without_touching_cuda(monkeypatch):
    import importlib.util

    from segsft.run import generation

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))

    def no_cuda():
        raise AssertionError("CUDA queried")

    monkeypatch.setattr(torch.cuda, "is_available", no_cuda)
    monkeypatch.setattr(torch.cuda, "device_count", no_cuda)
    assert generation.pick_engine("auto") == "hf"


def test_the_vllm_engine_gets_its_gpu_before_vllm_starts_and_the_revision(launcher, tiny_model_dir):
    import os

    from segsft.run.generation import VLLMEngine

    seen: dict = {}

    class FakeLLM:
        def __init__(self, **kwargs):
            seen.update(kwargs, visible=os.environ.get("CUDA_VISIBLE_DEVICES"))

    launcher.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=FakeLLM))
    launcher.setenv("CUDA_VISIBLE_DEVICES", "6,7")
    launcher.setenv("LOCAL_RANK", "1")
    settings = SimpleNamespace(dtype="auto", seed=0, tensor_parallel_size=1, gpu_memory_utilization=0.9)
    eng = VLLMEngine(ModelConf(name_or_path=tiny_model_dir, revision="v1.2"), settings)
    assert eng.devices == "7" and seen["visible"] == "7"
    assert seen["revision"] == "v1.2" and seen["tokenizer_revision"] == "v1.2"
    assert seen["gpu_memory_utilization"] == 0.9 and seen["tensor_parallel_size"] == 1


def _ranks(tmp_path, *extra: str) -> dict:
    """bench/vllm_ranks.py over 2 ranks: its checks by name (the script is what bench/gpu/run.sh runs)."""
    out = tmp_path / "ranks.json"
    p = subprocess.run([sys.executable, str(REPO / "bench" / "vllm_ranks.py"), "--ranks", "2", "--out", str(out), *extra],
                       capture_output=True, text=True, timeout=900)
    data = json.loads(out.read_text())
    assert p.returncode == 0 and data["passed"], p.stdout + p.stderr[-2000:]
    return {c["check"]: c["ok"] for c in data["checks"]}


def _two_gpus() -> None:
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")


@pytest.mark.gpu
def test_two_ranks_get_two_gpus(tmp_path):
    _two_gpus()
    checks = _ranks(tmp_path, "--no-engine")
    assert checks["the ranks' GPUs differ"] and checks["rank 1 is on entry 1 of the launcher's GPUs"]


@pytest.mark.gpu
def test_two_ranks_engines_run_on_two_gpus(tmp_path):
    _two_gpus()
    pytest.importorskip("vllm")
    checks = _ranks(tmp_path)
    assert checks["the ranks' GPUs differ"]
    assert checks["rank 0's engine holds its own GPU"] and checks["rank 1's engine holds its own GPU"]
