"""The select stage end to end on hand-written attribution dirs: outputs, errors, multirun sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from conftest import compose_config
from segsft.run.hints import make_hints
from segsft.store.io import write_parquet
from segsft.store.shipped import conf_dir
from segsft.schemas import SEGMENTS_SCHEMA
from segsft.select import (MASKS_SCHEMA, PER_SAMPLE_SCHEMA, SWEEP_SCHEMA, AttributionNotReady, SelectionDirTaken,
                           check_config, open_attribution)
from segsft.select.stage import run
from segsft.select.synthetic import sample_rows, segment_rows, write_attribution, write_part

REPO = Path(__file__).resolve().parents[1]


def _rows() -> list[dict]:
    return (segment_rows("a", [0.5, 0.3, 0.1, 0.05, 0.05], [0.2, 0.9, 0.5, None, 0.1], [4, 6, 3, 2, 5])
            + segment_rows("b", [0.2, 0.6, 0.2], [0.3, 0.5, 0.7], [10, 1, 2])
            + segment_rows("c", [1.0], [0.99], [8]))


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    write_attribution(tmp_path / "run", _rows(), world=2)
    return tmp_path / "run"


def test_run_writes_masks_summaries_and_config(run_dir):
    cfg = compose_config("stage=select", f"run_dir={run_dir}")
    assert check_config(cfg) == []
    summary = run(cfg)
    out = Path(cfg.selection_dir)
    assert out.parent == run_dir / "selection" and "top0.7" in out.name and "maxc0.8" in out.name
    masks = pq.read_table(out / "masks.parquet")
    assert masks.schema == MASKS_SCHEMA
    got = {(r["sample_id"], r["segment"]): (r["train"], r["why"]) for r in masks.to_pylist()}
    # a: order 0 (.5), 1 (.3: crosses to .8), ... -> prefix {0, 1}; 1 is too consistent;
    # 3 (-2) and 4 (-1) are always kept. b: order 1 (.6), 0 (.2, before 2 by index: crosses
    # to .8), 2 -> prefix {1, 0}; 2 is -1. c: its only segment is too consistent but segment 0.
    assert got == {
        ("a", 0): (True, "top_mass"), ("a", 1): (False, "too_consistent"), ("a", 2): (False, "below_top_mass"),
        ("a", 3): (True, "always_keep"), ("a", 4): (True, "always_keep"),
        ("b", 0): (True, "top_mass"), ("b", 1): (True, "top_mass"), ("b", 2): (True, "always_keep"),
        ("c", 0): (True, "always_keep"),
    }
    per = pq.read_table(out / "summary_per_sample.parquet")
    assert per.schema == PER_SAMPLE_SCHEMA
    assert {r["sample_id"]: (r["segments_kept"], r["tokens_kept"], r["n_tokens"]) for r in per.to_pylist()} == {
        "a": (3, 4 + 2 + 5, 20), "b": (3, 13, 13), "c": (1, 8, 8)}
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    o = on_disk["overall"]
    assert (o["samples"], o["segments"], o["segments_kept"], o["tokens"], o["tokens_kept"]) == (3, 9, 7, 41, 32)
    assert o["share_tokens_kept"] == pytest.approx(32 / 41)
    assert on_disk["by_why"]["too_consistent"] == {"segments": 1, "tokens": 6, "trained": 0}
    assert on_disk["methods"]["full"]["tokens_kept"] == 41
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["select"]["top_mass"] == 0.7 and saved["selection_dir"] == str(out)  # resolved
    assert not list(out.glob(".*.tmp"))


def test_rerun_into_a_dir_of_other_settings_is_refused(run_dir):
    run(compose_config("stage=select", f"run_dir={run_dir}"))
    run(compose_config("stage=select", f"run_dir={run_dir}"))  # same settings: fine
    with pytest.raises(SelectionDirTaken, match=r"always_keep: \[0, -2, -1\] there, \[0\] here.*selection_dir="):
        run(compose_config("stage=select", f"run_dir={run_dir}", "select.always_keep=[0]"))


def test_min_tokens_reads_the_samples_table(tmp_path):
    rows = _rows()
    write_attribution(tmp_path / "r", rows, sample_rows(rows, {"a": 100, "b": 99, "c": 500}))
    summary = run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', "select.min_tokens=100"))
    masks = pl.read_parquet(Path(summary["paths"]["masks.parquet"]))
    assert masks.filter(pl.col("sample_id") == "b")["why"].to_list() == ["short_sample"] * 3
    assert "short_sample" not in masks.filter(pl.col("sample_id") != "b")["why"].to_list()
    assert summary["overall"]["short_samples"] == 1


def test_min_tokens_compares_the_training_length_not_the_attribution_length(tmp_path):
    rows = _rows()
    samples = sample_rows(rows, {"a": 110, "b": 110, "c": 110})
    for s in samples:  # b's training sequence (no answer suffix) is shorter than min_tokens
        s["train_tokens"] = 90 if s["sample_id"] == "b" else 105
    write_attribution(tmp_path / "r", rows, samples)
    masks = pl.read_parquet(Path(run(compose_config("stage=select", f'run_dir={tmp_path / "r"}',
                                                    "select.min_tokens=100"))["paths"]["masks.parquet"]))
    assert masks.filter(pl.col("sample_id") == "b")["why"].to_list() == ["short_sample"] * 3
    assert "short_sample" not in masks.filter(pl.col("sample_id") != "b")["why"].to_list()


@pytest.mark.parametrize("policy", ["keep", "full", "drop"])
def test_unconverged_samples_are_kept_trained_in_full_or_dropped(tmp_path, policy):
    rows = _rows()
    samples = sample_rows(rows)
    for s in samples:
        s.update(rule="adaptive", converged=s["sample_id"] != "a", decision_stability=0.8 if s["sample_id"] == "a" else 1.0)
    write_attribution(tmp_path / "r", rows, samples)
    keep = pl.read_parquet(Path(run(compose_config("stage=select", f'run_dir={tmp_path / "r"}'))["paths"]["masks.parquet"]))
    summary = run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', f"select.unconverged={policy}",
                                 f"selection_dir={tmp_path / policy}"))
    masks = pl.read_parquet(Path(summary["paths"]["masks.parquet"]))
    assert summary["unconverged"] == {"samples": 1, "policy": policy, "ids": ["a"]}
    others = pl.col("sample_id") != "a"
    assert masks.filter(others).equals(keep.filter(others))  # converged samples are untouched
    a = masks.filter(pl.col("sample_id") == "a")
    if policy == "keep":
        assert a.equals(keep.filter(pl.col("sample_id") == "a"))
    elif policy == "full":
        assert a["train"].all() and a["why"].to_list() == ["unconverged"] * 5
    else:
        assert a.height == 0 and summary["overall"]["samples"] == 2


@pytest.mark.parametrize("policy", ["rule", "keep", "drop"])
def test_borderline_segments_keep_the_rule_or_are_trained_or_not(tmp_path, policy):
    rows = _rows()
    # Sample a, no always_keep: the rule trains segment 0 (top_mass) and masks 1 (too
    # consistent) and 2 (below top mass); all three are flagged borderline.
    for r in rows:
        r.update(strength_err=0.01, borderline=r["sample_id"] == "a" and r["segment"] in (0, 1, 2))
    write_attribution(tmp_path / "r", rows)
    rule = pl.read_parquet(Path(run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', "select.always_keep=[]"))["paths"]["masks.parquet"]))
    summary = run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', "select.always_keep=[]", f"select.borderline={policy}",
                       f"selection_dir={tmp_path / policy}"))
    masks = pl.read_parquet(Path(summary["paths"]["masks.parquet"]))
    assert summary["borderline"] == {"segments": 3, "policy": policy}
    assert masks["borderline"].to_list() == [r["borderline"] for r in sorted(rows, key=lambda r: (r["sample_id"], r["segment"]))]
    a, rule_a = masks.filter(pl.col("sample_id") == "a"), rule.filter(pl.col("sample_id") == "a")
    assert rule_a["train"].to_list()[:3] == [True, False, False]
    assert masks.filter(pl.col("sample_id") != "a").equals(rule.filter(pl.col("sample_id") != "a"))
    assert a["train"].to_list()[3:] == rule_a["train"].to_list()[3:]  # not flagged: untouched
    expect = {"rule": [True, False, False], "keep": [True, True, True], "drop": [False, False, False]}[policy]
    assert a["train"].to_list()[:3] == expect
    # why=borderline exactly where the policy changed the rule's decision.
    assert [w == "borderline" for w in a["why"]] == [t0 != t1 for t0, t1 in zip(rule_a["train"], a["train"])]


def test_borderline_drop_never_drops_an_always_keep_segment(tmp_path):
    rows = _rows()
    for r in rows:
        r.update(strength_err=0.01, borderline=r["segment"] == 0)
    write_attribution(tmp_path / "r", rows)
    masks = pl.read_parquet(Path(run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', "select.borderline=drop"))["paths"]["masks.parquet"]))
    assert masks.filter(pl.col("segment") == 0)["train"].all()


def test_unconverged_full_keeps_the_reason_of_samples_trained_in_full_anyway():
    from segsft.select.stage import apply_unconverged

    mask = pl.DataFrame({"sample_id": ["a", "a", "b"], "segment": [0, 1, 0], "train": [True, True, False],
                         "why": ["short_sample", "short_sample", "below_top_mass"]})
    out = apply_unconverged(mask, ["a", "b"], "full")
    assert out["why"].to_list() == ["short_sample", "short_sample", "unconverged"] and out["train"].all()


def test_select_warns_when_the_stop_test_used_other_settings(tmp_path, caplog):
    rows = _rows()
    adir = write_attribution(tmp_path / "r", rows)
    from segsft.store.layout import AttributionLayout

    lay = AttributionLayout(adir)
    for part in lay.finished_parts():
        lay.marker(part).write_text(json.dumps({"part": part, "stop_test_select": {"top_mass": 0.5, "max_consistency": 0.8,
                                                                                    "min_consistency": None, "always_keep": [0, -2, -1],
                                                                                    "min_tokens": 0}}))
    with caplog.at_level("WARNING"):
        run(compose_config("stage=select", f'run_dir={tmp_path / "r"}'))
    assert "top_mass: 0.5 there, 0.7 here" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', "select.top_mass=0.5",
                           f"selection_dir={tmp_path / 'same'}"))
    assert "stop test judged convergence" not in caplog.text


def test_random_method_summary_reports_the_rule_it_matched(run_dir):
    summary = run(compose_config("stage=select", f"run_dir={run_dir}", "select.method=random", "select.seed=3"))
    assert Path(summary["paths"]["masks.parquet"]).parent.name.startswith("random-")
    assert set(summary["methods"]) == {"random", "attribution", "full"}
    assert summary["methods"]["attribution"]["tokens_kept"] == 32


def test_check_config_lists_every_problem(run_dir):
    cfg = compose_config("stage=select", f"run_dir={run_dir}", "select.method=best", "select.top_mass=1.5",
                         "select.max_consistency=0.3", "select.min_consistency=0.6", "select.min_tokens=-1",
                         "select.seed=-2")
    errs = check_config(cfg)
    for needle in ("select.method='best'", "select.top_mass=1.5", "select.min_consistency=0.6 > select.max_consistency",
                   "select.min_tokens=-1", "select.seed=-2"):
        assert any(needle in e for e in errs), (needle, errs)
    assert len(errs) == 5
    # A value of the wrong type never reaches the checks: composing the config refuses it, naming the key.
    from hydra.errors import ConfigCompositionException

    for bad in ("select.always_keep=[0,x]", "select.top_mass=most", "select.unknown_key=1"):
        with pytest.raises(ConfigCompositionException, match=bad.split("=")[0].replace(".", r"\.")):
            compose_config("stage=select", f"run_dir={run_dir}", bad)
    # A hand-made mapping (an older selection's saved settings) is checked as strictly.
    from segsft.method.selection_config import check_settings

    assert any("select.always_keep=" in e for e in check_settings({**cfg.select, "always_keep": [0, "x"]}))


# ---- errors about the attribution directory ---------------------------------------------------

def test_missing_attribution_says_run_the_attribute_stage(tmp_path):
    with pytest.raises(AttributionNotReady, match=r"does not exist.*`python pipeline.py stage=attribute run_dir="):
        open_attribution(tmp_path / "nothing")
    (tmp_path / "empty" / "attribution").mkdir(parents=True)
    with pytest.raises(AttributionNotReady, match=r"holds no segments-\*\.parquet.*stage=attribute"):
        open_attribution(tmp_path / "empty")


def test_incomplete_parts_are_named_and_resume_is_suggested(tmp_path):
    rows = _rows()
    adir = tmp_path / "r" / "attribution"
    write_part(adir, rows[:5], sample_rows(rows[:5]), 0, 3)
    write_part(adir, rows[5:], sample_rows(rows[5:]), 1, 3, done=False)  # killed before its marker
    (adir / "_partial" / "00002-of-00003").mkdir(parents=True)  # still in its chunks
    with pytest.raises(AttributionNotReady) as e:
        open_attribution(tmp_path / "r")
    msg = str(e.value)
    assert "part 00001-of-00003 has no completion marker part-00001-of-00003.done" in msg
    assert "part 00002-of-00003 has unfinished chunks" in msg
    assert "part 00000-of-00003" not in msg  # the complete part is not reported
    run_dir = tmp_path / "r"
    assert f"`python pipeline.py stage=attribute run_dir={run_dir}` under torchrun --nproc_per_node 3 again" in msg
    assert "resumes" in msg and "make" not in msg  # the library names the pipeline command; the CLI says make:
    assert f"`make attribute RUN_DIR={run_dir} NPROC=3` again" in make_hints(msg)


def test_one_unfinished_part_is_one_line_with_its_remedy(tmp_path):
    rows = _rows()
    write_part(tmp_path / "r" / "attribution", rows, sample_rows(rows), 0, 1, done=False)
    with pytest.raises(AttributionNotReady) as e:
        open_attribution(tmp_path / "r")
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert msg.startswith(f"the attribution under {tmp_path / 'r' / 'attribution'} is not complete: part "
                          "00000-of-00001 has no completion marker part-00000-of-00001.done (world size 1). "
                          "To finish it, "), msg


def test_missing_ranks_and_mixed_world_sizes(tmp_path):
    rows = _rows()
    adir = tmp_path / "r" / "attribution"
    write_part(adir, rows, sample_rows(rows), 1, 2)
    with pytest.raises(AttributionNotReady, match=r"parts \['00000-of-00002'\] have no files yet"):
        open_attribution(tmp_path / "r")
    # A rerun with one process covers every row: world size 1 is complete, so the run is.
    write_part(adir, rows, sample_rows(rows), 0, 1)
    tables = open_attribution(tmp_path / "r")
    assert tables.mixed and any("00000-of-00002" in n and "ignored" in n for n in tables.notes)


def test_parts_of_several_world_sizes_are_read_each_sample_once(tmp_path):
    """World size 2 finished samples a and b; a rerun of world size 1 holds b again (as a
    consolidation cut short leaves it) with other scores, and c. Each sample is read once,
    from the first part in name order, its segments from the same part."""
    adir = tmp_path / "r" / "attribution"
    a, b = segment_rows("a", [0.5, 0.5], [0.1, 0.9]), segment_rows("b", [0.9, 0.1], [0.2, 0.3])
    b_again, c = segment_rows("b", [0.2, 0.3, 0.5], [0.5, 0.5, 0.5]), segment_rows("c", [1.0], [0.5])
    write_part(adir, a, sample_rows(a), 0, 2, rejects=[{"sample_id": "r1", "reason": "x", "source": "s", "row": 9}])
    write_part(adir, b, sample_rows(b), 1, 2, rejects=[{"sample_id": "c", "reason": "x", "source": "s", "row": 3}])
    write_part(adir, b_again + c, sample_rows(b_again + c), 0, 1,
               rejects=[{"sample_id": "r1", "reason": "x", "source": "s", "row": 9}])
    tables = open_attribution(tmp_path / "r")
    smp = tables.scan_samples().collect().sort("sample_id")
    assert smp["sample_id"].to_list() == ["a", "b", "c"]
    seg = tables.scan_segments().collect().sort("sample_id", "segment")
    assert seg.group_by("sample_id").len().sort("sample_id")["len"].to_list() == [2, 3, 1]  # b from 00000-of-00001
    assert seg.filter(pl.col("sample_id") == "b")["strength"].to_list() == [0.2, 0.3, 0.5]
    # A reject is read once, and not where a part scored the id (c was scored by the rerun).
    assert tables.scan_rejects().collect()["sample_id"].to_list() == ["r1"]
    out = run(compose_config("stage=select", f'run_dir={tmp_path / "r"}'))
    masks = pl.read_parquet(out["paths"]["masks.parquet"])
    assert masks.height == 6 and masks.select("sample_id", "segment").is_unique().all()
    out = run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', "select.method=score",
                             "select.score=strength"))  # ranks read across world sizes too
    masks = pl.read_parquet(out["paths"]["masks.parquet"])
    assert masks.height == 6 and set(masks["why"]) <= {"score_rank", "always_keep"}


def test_file_with_missing_columns_is_named_with_the_columns(tmp_path):
    rows = _rows()
    adir = write_attribution(tmp_path / "r", rows)
    path = adir / "segments-00000-of-00001.parquet"
    table = pq.read_table(path).drop_columns(["strength", "consistency"])
    pq.write_table(table, path)
    with pytest.raises(AttributionNotReady) as e:
        open_attribution(tmp_path / "r")
    assert f"{path} lacks column(s) ['strength', 'consistency']" in str(e.value)
    schema = pa.schema([f if f.name != "segment" else pa.field("segment", pa.int64()) for f in SEGMENTS_SCHEMA])
    write_parquet(path, pa.Table.from_pylist(rows, schema=schema), schema)
    with pytest.raises(AttributionNotReady, match=r"segments-00000-of-00001\.parquet: segment is int64, expected int32"):
        open_attribution(tmp_path / "r")


def test_pipeline_reports_attribution_errors_without_traceback(tmp_path):
    p = subprocess.run([sys.executable, "pipeline.py", "stage=select", f"run_dir={tmp_path / 'none'}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "make attribute" in p.stderr and "Traceback" not in p.stderr


# ---- multirun sweep ---------------------------------------------------------------------------

def _sweep(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    return subprocess.run([sys.executable, "pipeline.py", "--multirun", "stage=select", f"run_dir={run_dir}",
                           "+select/grid=default", *args], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)


def test_multirun_2x2_writes_four_dirs_and_a_four_row_table(run_dir):
    p = _sweep(run_dir, "select.top_mass=0.5,0.9", "select.max_consistency=0.6,1.0")
    assert p.returncode == 0, p.stderr[-3000:]
    dirs = sorted((run_dir / "selection").iterdir())
    assert len(dirs) == 4 and all((d / "masks.parquet").is_file() and (d / "config.yaml").is_file() for d in dirs)
    table_path = run_dir / "sweeps" / "select" / "sweep.parquet"
    table = pq.read_table(table_path)
    assert table.schema == SWEEP_SCHEMA
    t = pl.from_arrow(table)
    assert t.height == 4 and t["job"].to_list() == [0, 1, 2, 3]
    assert sorted(zip(t["top_mass"], t["max_consistency"])) == [(0.5, 0.6), (0.5, 1.0), (0.9, 0.6), (0.9, 1.0)]
    assert sorted(t["selection_dir"]) == [str(d) for d in dirs]
    for r in t.iter_rows(named=True):  # each row is its job's own figures
        s = json.loads((Path(r["selection_dir"]) / "summary.json").read_text())
        assert (r["segments_kept"], r["tokens_kept"]) == (s["overall"]["segments_kept"], s["overall"]["tokens_kept"])
        assert s["settings"]["top_mass"] == r["top_mass"]
    # more mass and a looser consistency bound keep more tokens
    by = {(a, b): k for a, b, k in zip(t["top_mass"], t["max_consistency"], t["share_tokens_kept"])}
    assert by[(0.9, 1.0)] == max(by.values()) and by[(0.5, 0.6)] == min(by.values())
    assert "sweep: 4 job(s)" in p.stdout and "share_tokens_kept" in p.stdout

    # A smaller sweep into the same run: the table holds its rows only, not the earlier ones.
    p = _sweep(run_dir, "select.top_mass=0.6", "select.max_consistency=0.7,0.8")
    assert p.returncode == 0, p.stderr[-3000:]
    t = pl.read_parquet(table_path)
    assert t.height == 2 and t["top_mass"].to_list() == [0.6, 0.6]


def test_default_grid_is_5x5():
    grid = yaml.safe_load((conf_dir() / "select" / "grid" / "default.yaml").read_text())
    params = grid["hydra"]["sweeper"]["params"]
    assert params["select.top_mass"].split(",") == ["0.5", "0.6", "0.7", "0.8", "0.9"]
    assert params["select.max_consistency"].split(",") == ["0.6", "0.7", "0.8", "0.9", "1.0"]


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (ties share the mean of their positions), independently of Polars."""
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def test_compare_table_equals_a_recount(tmp_path):
    from segsft.compare.stage import run as compare
    from segsft.select.synthetic import random_tables

    seg, smp = random_tables(60, 6, seed=4)
    write_part(tmp_path / "r" / "attribution", seg, smp)
    for ovr in (("select.method=attribution",), ("select.method=random",),
                ("select.method=score", "select.score=nll_mean"), ("select.method=score", "select.score=entropy_mean",
                                                                   "select.order=low")):
        run(compose_config("stage=select", f'run_dir={tmp_path / "r"}', *ovr))
    table = pl.read_parquet(compare(compose_config("stage=select", f'run_dir={tmp_path / "r"}')))
    names = sorted(p.name for p in (tmp_path / "r" / "selection").iterdir() if p.is_dir())
    assert table.height == 6 and sorted(set(table["a"]) | set(table["b"])) == names
    segs = pl.from_arrow(seg)
    score_of = {"attribution": ("strength", 1), "score-nll_mean": ("nll_mean", 1), "score-entropy_mean": ("entropy_mean", -1)}
    for r in table.iter_rows(named=True):
        ma = pl.read_parquet(tmp_path / "r" / "selection" / r["a"] / "masks.parquet")
        mb = pl.read_parquet(tmp_path / "r" / "selection" / r["b"] / "masks.parquet")
        js, rhos = [], []
        for sid in ma["sample_id"].unique().sort():
            a = set(ma.filter((pl.col("sample_id") == sid) & pl.col("train"))["segment"])
            b = set(mb.filter((pl.col("sample_id") == sid) & pl.col("train"))["segment"])
            js.append(len(a & b) / len(a | b) if a | b else 1.0)
            sa = next((v for k, v in score_of.items() if r["a"].startswith(k)), None)
            sb = next((v for k, v in score_of.items() if r["b"].startswith(k)), None)
            if sa and sb:
                g = segs.filter(pl.col("sample_id") == sid).sort("segment")
                xa, xb = g[sa[0]].to_numpy() * sa[1], g[sb[0]].to_numpy() * sb[1]
                rhos.append(np.corrcoef(_ranks(xa), _ranks(xb))[0, 1])
        assert r["samples"] == 60
        assert r["jaccard_mean"] == pytest.approx(np.mean(js)) and r["jaccard_median"] == pytest.approx(np.median(js))
        if rhos:
            assert r["spearman_mean"] == pytest.approx(np.mean(rhos)) and r["spearman_median"] == pytest.approx(np.median(rhos))
        else:
            assert r["spearman_mean"] is None and r["spearman_samples"] == 0
    same = table.filter(pl.col("a").str.starts_with("attribution") & pl.col("b").str.starts_with("random"))
    assert same["spearman_mean"][0] is None  # random ranks by nothing


def test_the_cli_names_make_targets_for_pipeline_commands():
    msg = ("x: run `python pipeline.py --multirun stage=select run_dir=runs/a +select/grid=default "
           "select.method=attribution,random` first; or `python pipeline.py stage=select run_dir=runs/a`; "
           "`python pipeline.py stage=attribute run_dir=runs/a` under torchrun --nproc_per_node 4 again")
    assert make_hints(msg) == ('x: run `make sweep RUN_DIR=runs/a ARGS="select.method=attribution,random"` first; or '
                               "`make select RUN_DIR=runs/a`; `make attribute RUN_DIR=runs/a NPROC=4` again")
