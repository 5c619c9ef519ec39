"""The report stage on hand-built runs: content of the page, parsed back from the HTML."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from conftest import REPORT_SELECT, Page, compose_config, write_jsonl
from segsft.method.metrics import segment_metrics
from segsft.store.layout import SWEEP_FILE
from segsft.report import ReportError, check_config
from segsft.report.stage import run
from segsft.report.view import pick_traces
from segsft.report.tokens import TokenMismatch, token_starts
from segsft.select.stage import run as select_run
from segsft.select.synthetic import write_attribution
from segsft.method.text import ANSWER_SUFFIX_DEFAULT, build_sequence, resolve_pattern

PATTERN = resolve_pattern("default")

ROWS = [
    {"id": "s0", "question": "What is 3 + 4?",
     "solution": "We add 3 and 4 to get 7.\n\nWait, let me check: 3 + 4 = 7.\n\nAlternatively, 4 + 3 = 7 too."
                 "\n\nHowever, nothing changes.\n\nWait, done.", "answer": "7"},
    {"id": "s1", "question": "Solve 2x = 10 <b>bold</b> & \"quoted\" <script>alert(1)</script>",
     "solution": "So x = 5 <i>since</i> 10 / 2 = 5 & that's it.\n\nBut wait, is 2 * 5 = 10? Yes."
                 "\n\nAnother check: 10 - 5 = 5.", "answer": "5"},
    {"id": "s2", "question": "Area of a 6 by 4 rectangle?",
     "solution": "Area is 6 * 4 = 24.\n\nGoing back, the sides are 6 and 4.\n\nWait, 24 it is."
                 "\n\nNot sure about units.\n\nBacktrack: units are squared.\n\nTrace back: 24.", "answer": "24"},
    {"id": "s3", "question": "Only one segment?", "solution": "Yes, a single segment of text with no keyword.",
     "answer": "1"},
]


def make_run(root: Path, tokenizer, rows: list[dict] = ROWS, world: int = 2, seed: int = 0) -> tuple[Path, Path]:
    """Attribution tables as the attribution stage lays them out, with random a_t over the real
    token spans of `tokenizer` (no model), one reject, and the corpus file."""
    rng = np.random.default_rng(seed)
    corpus = write_jsonl(root / "traces.jsonl", [*rows, '{"id": "broken", '])
    run_dir = root / "run"
    segs, samples = [], []
    for i, r in enumerate(rows):
        seq = build_sequence(tokenizer, r["question"], r["solution"], PATTERN, r["answer"], ANSWER_SUFFIX_DEFAULT)
        a = rng.normal(size=len(seq.input_ids))
        for k, (m, (cs, ce), (ts, te)) in enumerate(zip(segment_metrics(a, seq.segment_tokens),
                                                       seq.segment_chars, seq.segment_tokens)):
            segs.append({"sample_id": r["id"], "segment": k, "char_start": cs, "char_end": ce,
                         "token_start": ts, "token_end": te, **m})
        samples.append({"sample_id": r["id"], "n_tokens": len(seq.input_ids), "n_segments": len(seq.segment_chars),
                        "answer_logprob": -1.0, "baseline_logprob": -3.0, "attr_total": float(a.sum()),
                        "attr_norm": float(np.linalg.norm(a)), "completeness_gap": float(10.0 ** -(i + 2)),
                        "rule": "adaptive", "steps": 64, "model": "tiny", "seconds": 0.1,
                        "train_tokens": len(seq.input_ids) - 12, "steps_used": 20 + i,
                        "decision_stability": 1.0 - 0.25 * (i == 1), "converged": i != 1})
    rejects = [{"sample_id": "hbroken", "reason": "row 4: invalid JSON (x)", "source": str(corpus), "row": 4}]
    write_attribution(run_dir, segs, samples, world=world, rejects=rejects)
    return run_dir, corpus


@pytest.fixture(scope="module")
def built(tmp_path_factory, tokenizer, tiny_model_dir):
    root = tmp_path_factory.mktemp("report")
    run_dir, corpus = make_run(root, tokenizer)
    # Few always-kept segments and a tight bound: both trained and masked segments occur.
    select = ("stage=select", f"data.path={corpus}", f"model.name_or_path={tiny_model_dir}")  # then run_dir=...
    select_run(compose_config(*select, f"run_dir={run_dir}", *REPORT_SELECT))
    cfg = compose_config(*select, f"run_dir={run_dir}", *REPORT_SELECT)
    path = run(cfg)
    text = path.read_text(encoding="utf-8")
    return {"cfg": cfg, "path": path, "text": text, "page": Page(text), "run_dir": run_dir, "corpus": corpus,
            "model": tiny_model_dir, "root": root, "select": select}


def _segments_table(run_dir: Path) -> pl.DataFrame:
    return pl.read_parquet(run_dir / "attribution" / "segments-*.parquet").sort("sample_id", "segment")


def test_every_sample_and_segment_appears_and_the_text_is_the_trace(built):
    page, seg = built["page"], _segments_table(built["run_dir"])
    assert built["path"] == built["run_dir"] / "report.html"
    assert sorted(t["data-sample"] for t in page.traces) == [r["id"] for r in ROWS]
    assert sorted((s["data-sample"], int(s["data-segment"])) for s in page.segments) == \
        list(zip(seg["sample_id"], seg["segment"]))
    for r in ROWS:
        mine = [s for s in page.segments if s["data-sample"] == r["id"]]
        assert [int(s["data-segment"]) for s in mine] == list(range(len(mine)))  # in trace order
        assert "".join(s["text"] for s in mine) == r["solution"]
    assert len(page.nav) == len(ROWS)
    assert not list(built["run_dir"].glob(".report.html.*"))  # written atomically, nothing left over


def test_segment_shade_increases_with_strength(built):
    page = built["page"]
    for r in ROWS:
        mine = [(float(s["data-strength"]), float(re.fullmatch(r"--s:([0-9.]+)", s["style"]).group(1)))
                for s in page.segments if s["data-sample"] == r["id"]]
        mine.sort()
        for (s0, a0), (s1, a1) in zip(mine, mine[1:]):
            assert a1 >= a0
            if s1 > s0 * 1.01:
                assert a1 > a0, (r["id"], mine)
        assert mine[-1][1] == pytest.approx(0.8, abs=1e-3)  # the strongest segment of a trace is darkest


def test_masked_segments_show_their_reason(built):
    page = built["page"]
    masks = pl.read_parquet(next((built["run_dir"] / "selection").glob("*/masks.parquet")))
    by_key = {(s["data-sample"], int(s["data-segment"])): s for s in page.segments}
    assert masks.height == len(by_key)
    assert not masks["train"].all() and masks["train"].any()  # the data exercises both
    for r in masks.iter_rows(named=True):
        s = by_key[(r["sample_id"], r["segment"])]
        assert s["data-train"] == ("1" if r["train"] else "0")
        assert s["data-why"] == r["why"]
        assert ("masked" if not r["train"] else "trained") in s["cls"]
        assert f"({r['why']})" in s["title"] and s["labels"] == [f"#{r['segment']} {'✓' if r['train'] else '✗'} {r['why']}"]
        assert "strength" in s["title"] and "consistency" in s["title"]


def test_tokens_are_shaded_by_sign_and_size_of_their_attribution(built, tokenizer):
    page, seg = built["page"], _segments_table(built["run_dir"])
    toggles = [i for i in page.inputs if i.get("id") == "tok-toggle"]
    assert toggles and toggles[0]["type"] == "checkbox"
    assert "classList.toggle('tokens'" in built["text"]
    for r in ROWS:
        sg = seg.filter(pl.col("sample_id") == r["id"])
        attrs = [np.asarray(a, dtype=float) for a in sg["token_attr"]]
        amax = np.quantile(np.abs(np.concatenate(attrs)), 0.99)  # full colour from the 99th percentile up
        starts = token_starts(tokenizer, r["question"], r["solution"], r["answer"], ANSWER_SUFFIX_DEFAULT, sg.to_dicts())
        expected = {}  # first character of a token -> its summed a_t
        for st, a in zip(starts, attrs):
            for c, v in zip(st.tolist(), a.tolist()):
                expected[c] = expected.get(c, 0.0) + v
        pieces = [p for p in page.pieces if p["segment"]["data-sample"] == r["id"]]
        assert pieces
        # walk the pieces through the trace text: each piece lies in the token that starts at or before it
        pos, keys = 0, sorted(expected)
        seg_text = {int(s["data-segment"]): s for s in page.segments if s["data-sample"] == r["id"]}
        assert len(seg_text) == sg.height
        text = r["solution"]
        seen = set()
        for p in pieces:
            pos = text.index(p["text"], pos)
            owner = max(c for c in keys if c <= pos)
            v = expected[owner]
            alpha = float(re.fullmatch(r"--a:([0-9.]+)", p["style"]).group(1))
            assert alpha == pytest.approx(min(1.0, abs(v) / amax), abs=0.006)
            assert ("p" in p["cls"]) == (v > 0) and ("n" in p["cls"]) == (v < 0)
            seen.add(owner)
            pos += len(p["text"])
        assert seen == set(keys)  # every token is drawn


def test_keywords_are_highlighted(built):
    kws = [s["kw"] for s in built["page"].segments if "kw" in s]
    # one per segment that starts with a keyword: every segment but the first of each trace
    n_kw = sum(len(PATTERN.findall(r["solution"])) for r in ROWS)
    assert len(kws) == n_kw
    assert sorted(set(kws)) == ["Alternatively", "Another", "Backtrack", "But wait", "Going back", "However",
                                "Not sure", "Trace back", "Wait"]


def test_the_page_is_self_contained_and_escaped(built):
    text, page = built["text"], built["page"]
    assert not [r for r in page.refs if not (r.startswith("#") or r.startswith("data:image/png;base64,"))]
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text)
    assert "https://" not in text and "http://" not in text
    assert "default-src 'none'" in text  # the browser refuses any other load
    assert sum(r.startswith("data:image/png;base64,") for r in page.refs) == 3  # gaps, scatter, shares
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert page.tags_in_segments == {"span"}  # the trace's "<i>since</i>" stayed text
    assert text.count("<script>") == 1


def test_overview_figures_and_selection_shares(built):
    text, run_dir = built["text"], built["run_dir"]
    masks = pl.read_parquet(next((run_dir / "selection").glob("*/masks.parquet")))
    seg_share = masks["train"].mean()
    tok_share = masks.filter(pl.col("train"))["n_tokens"].sum() / masks["n_tokens"].sum()
    assert f"{100 * seg_share:.1f}% ({int(masks['train'].sum())}/{masks.height})" in text
    assert f"{100 * tok_share:.1f}% (" in text
    page = built["page"]
    assert page.row("samples scored") == ["4"] and page.row("rejected rows") == ["1"]
    assert "invalid JSON (x)" in text  # rejects by reason, row number stripped
    smp = pl.read_parquet(run_dir / "attribution" / "samples-*.parquet")
    n_seg = masks.group_by("sample_id").len()["len"]
    assert f"{n_seg.mean():.1f} / {n_seg.min()} / {n_seg.max()}" in text
    gaps = smp["completeness_gap"]
    cells = [f'{gaps.quantile(q, "nearest"):.2e}' for q in (0.0, 0.1, 0.5, 0.9, 1.0)]
    assert any(r[-5:] == cells for r in page.rows)  # min, p10, median, p90, max


def test_convergence_shows_steps_stability_and_the_unconverged(built):
    text, run_dir = built["text"], built["run_dir"]
    smp = pl.read_parquet(run_dir / "attribution" / "samples-*.parquet")
    steps = smp["steps_used"]
    assert f"{steps.median():.0f} / {steps.max()}" in text
    cells = [c for r in built["page"].rows for c in r]
    assert f"{smp['decision_stability'].median():.2f}" in cells
    assert "1 of 4: s1" in cells  # the one sample that did not converge, by id
    assert "21 gradient evaluations · decision stability 0.75 · NOT converged" in text
    assert "20 gradient evaluations · decision stability 1.00 · converged" in text


def test_jump_list_is_sorted_by_kept_share(built):
    page = built["page"]
    shares = [float(t["data-kept-share"]) for t in page.traces]
    assert shares == sorted(shares)
    assert page.nav == [f"#t{i}" for i in range(len(page.traces))]


def test_max_traces_spreads_over_the_order_and_overview_keeps_all(built):
    cfg = compose_config(*built["select"], f'run_dir={built["run_dir"]}', "report.max_traces=2",
                         f"report.path={built['root'] / 'two.html'}")
    page = Page(run(cfg).read_text())
    per = pl.DataFrame({"sample_id": ["a", "b", "c", "d", "e"], "share_tokens_kept": [0.5, 0.1, None, 0.9, 0.3]})
    assert pick_traces(per, 2) == ["b", "c"]  # lowest and last (null shares go last)
    assert pick_traces(per, 3) == ["b", "a", "c"]
    assert pick_traces(per, 0) == [] and len(pick_traces(per, None)) == 5
    all_shares = sorted(float(t["data-kept-share"]) for t in built["page"].traces)
    assert [float(t["data-kept-share"]) for t in page.traces] == [all_shares[0], all_shares[-1]]
    assert len(page.segments) == sum(1 for s in built["page"].segments
                                     if s["data-sample"] in {t["data-sample"] for t in page.traces})


def test_without_a_tokenizer_segments_only_and_the_page_says_so(built, tmp_path):
    cfg = compose_config("stage=select", f'run_dir={built["run_dir"]}', f'data.path={built["corpus"]}',
                         f'model.name_or_path={str(tmp_path / "no-model")}', f"report.path={tmp_path / 'r.html'}")
    text = run(cfg).read_text()
    page = Page(text)
    assert not page.pieces and not [i for i in page.inputs if i.get("id") == "tok-toggle"]
    assert "token shading off: the tokenizer of model.name_or_path=" in text
    assert len(page.segments) == len(built["page"].segments)
    cfg = compose_config(*built["select"], f'run_dir={built["run_dir"]}', "report.token_shading=false",
                         f"report.path={tmp_path / 'r2.html'}")
    assert "token shading off: report.token_shading=false" in run(cfg).read_text()


def test_token_positions_must_match_the_table(built, tokenizer):
    seg = _segments_table(built["run_dir"]).filter(pl.col("sample_id") == "s0").to_dicts()
    r = ROWS[0]
    token_starts(tokenizer, r["question"], r["solution"], r["answer"], ANSWER_SUFFIX_DEFAULT, seg)
    # another tokenizer would cut elsewhere: move the boundary between segments 1 and 2 by a token
    moved = [dict(s) for s in seg]
    moved[1]["token_end"] += 1
    moved[1]["token_attr"] = [*moved[1]["token_attr"], 0.0]
    moved[2]["token_start"] += 1
    moved[2]["token_attr"] = moved[2]["token_attr"][1:]
    with pytest.raises(TokenMismatch, match="segment 1: tokens"):
        token_starts(tokenizer, r["question"], r["solution"], r["answer"], ANSWER_SUFFIX_DEFAULT, moved)
    with pytest.raises(TokenMismatch, match="segment 0"):  # other answer suffix, same spans: lengths differ
        token_starts(tokenizer, r["question"], r["solution"], r["answer"], ANSWER_SUFFIX_DEFAULT,
                     [{**seg[0], "token_attr": seg[0]["token_attr"][1:]}, *seg[1:]])


def test_sweep_jobs_and_every_selection_are_listed(built, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(built["run_dir"], run_dir)
    (run_dir / "report.html").unlink()
    first = select_run(compose_config(*built["select"], f"run_dir={run_dir}", "select.top_mass=0.3"))
    sel_dir = Path(first["paths"]["masks.parquet"]).parent
    sweep = run_dir / "sweeps" / "select"
    sweep.mkdir(parents=True)
    pl.DataFrame({"job": [7], "selection_dir": [str(sel_dir)]}).write_parquet(sweep / SWEEP_FILE)
    (run_dir / "selection" / "unfinished").mkdir()
    cfg = compose_config(*built["select"], f"run_dir={run_dir}", *REPORT_SELECT)  # its selection_dir is shown, not the newest
    text = run(cfg).read_text()
    names = sorted(p.name for p in (run_dir / "selection").iterdir() if (p / "config.yaml").is_file())
    assert len(names) == 2 and all(n in text for n in names)
    assert Page(text).row(sel_dir.name)[0] == "7"  # its sweep job
    page = Page(text)
    chosen = [r for r, c in zip(page.rows, page.row_classes) if c == "chosen"]
    assert len(chosen) == 1 and chosen[0][0].startswith(f"{Path(cfg.selection_dir).name} ★")
    assert "unfinished is skipped" in text
    # an explicit selection: only it is listed, its masks colour the traces
    cfg = compose_config(*built["select"], f"run_dir={run_dir}", *REPORT_SELECT, f"report.selection={sel_dir}")
    text = run(cfg).read_text()
    assert sel_dir.name in text and Path(cfg.selection_dir).name not in text
    masks = pl.read_parquet(sel_dir / "masks.parquet")
    page = Page(text)
    assert sum(s["data-train"] == "1" for s in page.segments) == int(masks["train"].sum())


def test_agreement_table_and_the_cheap_signals_figure(built, tmp_path):
    import shutil

    from segsft.compare.stage import run as compare

    run_dir = tmp_path / "run"
    shutil.copytree(built["run_dir"], run_dir)
    text = run(compose_config(*built["select"], f"run_dir={run_dir}", *REPORT_SELECT)).read_text()
    assert "Agreement between selections" in text and "stage=compare" in text  # says how to get it
    assert "no token statistics in this run" in text  # these hand-made tables have none
    # Give the tables a signal, select by it, compare.
    from segsft.store.io import write_parquet
    from segsft.schemas import SEGMENTS_SCHEMA

    for f in (run_dir / "attribution").glob("segments-*.parquet"):
        t = pl.read_parquet(f).with_columns(nll_mean=pl.col("strength") * 2 + 1)
        write_parquet(f, t.to_arrow(), SEGMENTS_SCHEMA)
    select_run(compose_config(*built["select"], f"run_dir={run_dir}", *REPORT_SELECT, "select.method=score",
                              "select.score=nll_mean"))
    table = pl.read_parquet(compare(compose_config(*built["select"], f"run_dir={run_dir}")))
    assert table.height == 1 and table["spearman_mean"][0] == pytest.approx(1.0)  # a monotone signal ranks as IG does
    text = run(compose_config(*built["select"], f"run_dir={run_dir}", *REPORT_SELECT)).read_text()
    r = table.row(0, named=True)
    assert Page(text).row(r["a"])[:3] == [r["b"], str(r["samples"]), f'{r["jaccard_mean"]:.3f}']
    assert "IG strength against the cheap per-segment signals" in text and "nll_mean +1.00" in text


def test_evaluation_section_shows_the_results_side_by_side(built, tmp_path):
    import shutil

    from segsft.evaluate.results import results
    from segsft.store.io import write_parquet
    from segsft.schemas import RESULTS_SCHEMA

    run_dir = tmp_path / "run"
    shutil.copytree(built["run_dir"], run_dir)
    rows = [{"model": m, "benchmark": b, "problem_id": f"p{i}", "sample": 0, "output": "", "output_tokens": t + i,
             "finish_reason": "stop", "answer": "1", "pred": "1", "correct": i < c, "verdict": "x"}
            for m, t, c in (("base", 100, 1), ("tuned", 80, 3)) for b in ("aime24", "math500") for i in range(4)]
    table = results(pl.DataFrame(rows), bootstrap=100)
    write_parquet(run_dir / "eval" / "results.parquet", table.to_arrow(), RESULTS_SCHEMA)
    text = run(compose_config(*built["select"], f"run_dir={run_dir}", *REPORT_SELECT)).read_text()
    assert Page(text).headings["evaluation"] == "Evaluation" and "accuracy vs mean output length" in text
    t = table.filter((pl.col("model") == "tuned") & (pl.col("benchmark") == "aime24")).row(0, named=True)
    assert f"{100 * t['accuracy']:.1f}% ({100 * t['accuracy_ci_low']:.1f}-{100 * t['accuracy_ci_high']:.1f}) / 82" in text
    assert "+50.0 pts, -20% tokens" in text  # 75% vs 25%, 81.5 vs 101.5 mean tokens


def test_without_selection_segments_are_unmarked(tmp_path, tokenizer, tiny_model_dir):
    run_dir, corpus = make_run(tmp_path, tokenizer, ROWS[:2], world=1)
    text = run(compose_config("stage=select", f"run_dir={run_dir}", f"data.path={corpus}",
                              f"model.name_or_path={tiny_model_dir}")).read_text()
    page = Page(text)
    assert len(page.traces) == 2 and all(s["data-train"] == "" and s["data-why"] == "" for s in page.segments)
    assert f"`python pipeline.py stage=select run_dir={run_dir}`" in text
    assert "no kept-token share histogram" in text


def test_missing_inputs_say_what_to_run(tmp_path, built):
    cfg = compose_config(*built["select"], f'run_dir={tmp_path / "none"}')
    with pytest.raises(ReportError, match=r"does not exist.*`python pipeline.py stage=attribute run_dir="):
        run(cfg)
    cfg = compose_config(*built["select"], f'run_dir={built["run_dir"]}', f"report.selection={tmp_path / 'nosel'}",
                         f"report.path={tmp_path / 'x.html'}")
    with pytest.raises(ReportError, match=r"holds no masks.parquet: run `python pipeline.py stage=select run_dir="):
        run(cfg)
    cfg = compose_config("stage=select", f'run_dir={built["run_dir"]}', f'data.path={tmp_path / "gone.jsonl"}',
                         f'model.name_or_path={built["model"]}', f"report.path={tmp_path / 'y.html'}")
    with pytest.raises(Exception, match=r"data.path"):
        run(cfg)
    assert not (tmp_path / "x.html").exists() and not (tmp_path / "y.html").exists()


def test_check_config_lists_every_problem(built):
    cfg = compose_config(*built["select"], f'run_dir={built["run_dir"]}', "report.path=out.txt",
                         "report.max_traces=-1", "attribute.segment_pattern='\\n(Wait'")
    errs = check_config(cfg)
    for needle in ("report.path='out.txt'", "report.max_traces=-1", "attribute.segment_preset/segment_pattern"):
        assert any(needle in e for e in errs), (needle, errs)
    assert len(errs) == 3
    # A value of the wrong type never reaches the checks: composing the config refuses it, naming the key.
    from hydra.errors import ConfigCompositionException

    for bad in ("report.token_shading=maybe", "report.selection=[1]", "report.max_traces=many"):
        with pytest.raises(ConfigCompositionException, match=bad.split("=")[0].replace(".", r"\.")):
            compose_config(*built["select"], f'run_dir={built["run_dir"]}', bad)
    assert check_config(built["cfg"]) == []
    with pytest.raises(ReportError, match="invalid report configuration"):
        run(cfg)


def test_token_scale_ignores_a_few_outliers():
    from segsft.report.html import segment_shade, token_scale

    assert token_scale([1.0] * 200 + [-1000.0]) == pytest.approx(1.0)  # one huge token does not wash out the rest
    assert token_scale([0.0] * 200 + [5.0]) == 5.0 and token_scale([]) == 0.0
    assert token_scale([float("nan"), -2.0]) == pytest.approx(2.0, rel=0.02)
    shades = [segment_shade(s, 4.0) for s in (0.0, 1.0, 2.0, 4.0)]
    assert shades == sorted(shades) and len(set(shades)) == 4
    assert segment_shade(float("nan"), 4.0) == segment_shade(1.0, 0.0) == shades[0]


def test_cut_tiles_the_segment_at_tokens_keyword_and_label():
    from segsft.report.pieces import cut

    # Segment [10, 30); tokens start at 10, 14, 14 (two bytes of one character), 20, 27;
    # keyword [12, 18); label after two blank lines at 12.
    pieces = cut(10, 30, (12, 18), [10, 14, 14, 20, 27], [1.0, 2.0, 0.5, -1.0, 0.0], 12)
    assert [(p.start, p.end) for p in pieces] == [(10, 12), (12, 14), (14, 18), (18, 20), (20, 27), (27, 30)]
    assert [p.value for p in pieces] == [1.0, 1.0, 2.5, 2.5, -1.0, 0.0]
    assert [p.keyword for p in pieces] == [False, True, True, False, False, False]
    assert [p.label_before for p in pieces] == [False, True, False, False, False, False]
    # Without tokens: cut at the keyword and the label only, no values.
    bare = cut(0, 9, None, None, None, 0)
    assert [(p.start, p.end, p.value, p.label_before) for p in bare] == [(0, 9, None, True)]
    # A segment whose first token starts before it (a straddling token) still tiles [cs, ce).
    assert [(p.start, p.end, p.value) for p in cut(5, 9, None, [3, 7], [1.0, 2.0], 5)] == [(5, 7, 1.0), (7, 9, 2.0)]


def test_tables_written_before_the_adaptive_rule_still_report(built, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    from segsft.store.layout import RunLayout
    from segsft.report.load import load_attribution

    run = tmp_path / "old"
    shutil.copytree(built["run_dir"] / "attribution", RunLayout(run).attribution.dir)
    for p in RunLayout(run).attribution.finished("samples"):
        t = pq.read_table(p)
        pq.write_table(t.drop_columns(["steps_used", "decision_stability", "converged"]), p)
    att = load_attribution(run)
    assert att.samples.height == 4 and att.samples["converged"].null_count() == 4


def test_borderline_segments_are_marked_and_counted(built, tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    run_dir, corpus = make_run(tmp_path, tokenizer)
    want = {("s0", 1), ("s2", 0), ("s2", 2)}
    total = 0
    for p in sorted((run_dir / "attribution").glob("segments-*.parquet")):
        t = pq.read_table(p)
        keys = zip(t["sample_id"].to_pylist(), t["segment"].to_pylist())
        t = t.set_column(t.schema.get_field_index("borderline"), "borderline",
                         pa.array([k in want for k in keys], pa.bool_()))
        pq.write_table(t, p)
        total += t.num_rows
    cfg = compose_config(*built["select"][:1], f"data.path={corpus}", f"model.name_or_path={built['model']}",
                         f"run_dir={run_dir}", *REPORT_SELECT)
    select_run(cfg)
    text = run(cfg).read_text(encoding="utf-8")
    page = Page(text)
    shown = {(s["data-sample"], int(s["data-segment"])) for s in page.segments if s.get("data-borderline") == "1"}
    assert shown == want
    assert all("borderline" in s["cls"] for s in page.segments if s.get("data-borderline") == "1")
    assert all(any("borderline" in lab for lab in s.get("labels", [])) for s in page.segments if s.get("data-borderline") == "1")
    # The convergence table counts them over every segment of the run.
    assert re.search(rf"borderline segments[^<]*</t[dh]><td[^>]*>{len(want)} of {total}</td>", text)
