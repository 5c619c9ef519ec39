"""The demo pipeline with the real SmolLM2-135M weights (slow: converts them once)."""

from __future__ import annotations

import json
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
    seg = pl.read_parquet(lay.attribution.finished("segments"))
    # The printed summary is recap.json rendered: check its numbers against the tables.
    recap = json.loads(lay.recap.read_text())
    c = recap["convergence"]
    assert recap["scored"] == 2 and c["steps_median"] == samples["steps_used"].median()
    assert c["adaptive_samples"] == 2 and c["segments"] == seg.height
    assert c["borderline"] == int(seg["borderline"].fill_null(False).sum())
    assert c["unconverged"] == samples.filter(~pl.col("converged"))["sample_id"].to_list()
    assert recap["convergence_line"] in out.stdout
    assert seg.group_by("sample_id").len()["len"].sort().to_list() == samples["n_segments"].sort().to_list()
    masks = [s.masks for s in lay.selections()]
    assert len(masks) == 1 and pl.read_parquet(masks[0]).height == seg.height
    model_dir = lay.finetune.model
    assert (model_dir / "model.safetensors").exists() and (model_dir / "config.json").exists()
    top = seg.filter(pl.col("sample_id") == "sample-000").sort("strength", descending=True).head(3)
    assert recap["strongest"]["sample_id"] == "sample-000"
    assert [s["segment"] for s in recap["strongest"]["segments"]] == top["segment"].to_list()
    assert recap["outputs"]["model"] == str(model_dir) and recap["loss"]["first"] is not None
    assert [p["sample_id"] for p in recap["per_sample"]] == sorted(samples["sample_id"].to_list())
    # The loop closes: base and fine-tuned model evaluated side by side, and the report shows it.
    results = pl.read_parquet(run / "eval" / "results.parquet")
    assert results["model"].to_list() == ["HuggingFaceTB/SmolLM2-135M-Instruct", str(model_dir)]
    assert (results["n_problems"] == 5).all()
    # The report shows the evaluation: one table row per model and benchmark, by its parsed cells.
    from conftest import Page

    page = Page((run / "report.html").read_text())
    assert "evaluation" in page.headings
    for b in results["benchmark"].unique().to_list():
        cells, first = page.row(b), results.filter(pl.col("benchmark") == b).row(0, named=True)
        assert len(cells) == results.filter(pl.col("benchmark") == b).height
        assert cells[0].startswith(f"{100 * first['accuracy']:.1f}%")


@pytest.mark.parametrize("override", ["+experiment=demo", "data=sample"])
def test_the_embedded_sample_is_found_from_any_working_directory(tmp_path, monkeypatch, override):
    from conftest import compose_config

    monkeypatch.chdir(tmp_path)  # not the clone: a relative data/sample_traces.jsonl would not exist here
    path = compose_config(override).data.path
    assert path == str(REPO / "segsft" / "data" / "sample_traces.jsonl")
    assert sum(1 for _ in open(path)) > 0
