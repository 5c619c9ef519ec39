"""The demo pipeline with the real SmolLM2-135M weights (slow: converts them once)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import polars as pl
import pytest

from conftest import REPO
from segsft.store.layout import RunLayout


@pytest.mark.slow
def test_demo_pipeline_on_two_traces(tmp_path):
    run = tmp_path / "demo"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, str(REPO / "pipeline.py"), "stage=all", "+experiment=demo", f"run_dir={run}",
           "data.limit=2", "finetune.max_steps=2", "finetune.max_length=256"]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    lay = RunLayout(run)
    samples = pl.read_parquet(lay.attribution.finished("samples"))
    assert samples.height == 2 and samples["model"][0] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert all(math.isfinite(g) for g in samples["completeness_gap"])
    assert (samples["rule"] == "adaptive").all() and samples["steps_used"].max() <= 32
    assert "rule adaptive: gradient evaluations median" in out.stdout and "converged" in out.stdout
    seg = pl.read_parquet(lay.attribution.finished("segments"))
    assert seg.group_by("sample_id").len()["len"].sort().to_list() == samples["n_segments"].sort().to_list()
    masks = [s.masks for s in lay.selections()]
    assert len(masks) == 1 and pl.read_parquet(masks[0]).height == seg.height
    model_dir = lay.finetune.model
    assert (model_dir / "model.safetensors").exists() and (model_dir / "config.json").exists()
    assert "strongest segments of sample-000" in out.stdout and str(model_dir) in out.stdout
    # The loop closes: base and fine-tuned model evaluated side by side, and the report shows it.
    results = pl.read_parquet(run / "eval" / "results.parquet")
    assert results["model"].to_list() == ["HuggingFaceTB/SmolLM2-135M-Instruct", str(model_dir)]
    assert (results["n_problems"] == 5).all() and "acc %" in out.stdout and "vs first" in out.stdout
    assert "Evaluation</h3>" in (run / "report.html").read_text()
