"""The report stage: run_dir's attribution + selections + corpus -> one HTML file (`report.path`)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import polars as pl

from segsft.store.corpus import read_corpus
from segsft.store.io import write_text
from segsft.report import plots, tokens
from segsft.config_schema import ReportConf, Settings
from segsft.report.config import ReportError, check_config
from segsft.report.load import find_selections, load_agreement, load_attribution, load_results
from segsft.report.view import build_traces, join_masks, overview, pick_traces, sample_table
from segsft.report.html import Page, render
from segsft.method.text import resolve_pattern

log = logging.getLogger(__name__)


def _figures(joined: pl.DataFrame, samples: pl.DataFrame, ov: dict, chosen: Any) -> dict[str, tuple[str | None, str]]:
    """name -> (PNG data URI or None, caption)."""
    st = chosen.settings if chosen else {}
    label = chosen.name if chosen else "no selection"
    uri, caption = plots.scatter(joined["strength"].to_numpy(), joined["consistency"].fill_null(float("nan")).to_numpy(),
                                 None if chosen is None else joined["train"].to_numpy(),
                                 st.get("max_consistency"), st.get("min_consistency"), label)
    if chosen:
        caption += (f"; colour: trained / masked by {label} (top_mass={st.get('top_mass')} is a per-sample share "
                    "of strength, not a line here)")
    figs = {"gaps": (plots.gap_histogram(ov["gaps"]), f"{len(ov['gaps'])} samples"), "scatter": (uri, caption),
            "signals": plots.signals_scatter(joined["strength"].to_numpy(),
                                             {c: joined[c].cast(pl.Float64).fill_null(float("nan")).to_numpy()
                                              for c in ("nll_mean", "entropy_mean", "gxi_abs_sum") if c in joined.columns})}
    if chosen is not None:
        shares = samples["share_tokens_kept"].drop_nulls().to_numpy()
        figs["shares"] = (plots.share_histogram(shares, label), f"{len(shares)} samples, selection {label}")
    else:
        figs["shares"] = (None, "no kept-token share histogram: there is no selection")
    return figs


def _token_shading(traces: list, cfg: Settings, rc: ReportConf, recorded: list[str]) -> str | None:
    """Attach token positions to the traces; return why token shading is off, or None.

    `recorded`: the model names in the samples table, for the hint when the tokenizer disagrees."""
    if not rc.token_shading:
        return "report.token_shading=false"
    if not traces:
        return None
    tok, why = tokens.load(cfg.model)
    if tok is None:
        return f"the tokenizer of model.name_or_path={cfg.model.name_or_path} could not be loaded ({why}); segments only"
    failed = 0
    for t in traces:
        try:
            t.token_starts = tokens.token_starts(tok, t.question, t.solution, t.answer, cfg.attribute.answer_suffix, t.segments)
        except (tokens.TokenMismatch, ValueError) as e:
            failed += 1
            t.notes.append(f"token shading is off for this trace: the tokenizer of model.name_or_path does not "
                           f"reproduce the attribution's tokens ({e}); pass the run's model and attribute.answer_suffix")
    if failed == len(traces):
        return (f"the tokenizer of model.name_or_path={cfg.model.name_or_path} does not reproduce the "
                f"attribution's tokens of any trace; pass the run's model (the run recorded {', '.join(recorded)}) "
                "and attribute.answer_suffix")
    return None


def run(cfg: Settings | Any, checked: bool = False) -> Path:
    """Write the report of `cfg.run_dir` to `cfg.report.path` and return that path
    (`checked`: the pipeline has checked the config already)."""
    cfg = Settings.of(cfg)
    errs = [] if checked else check_config(cfg)
    if errs:
        raise ReportError("invalid report configuration:\n  - " + "\n  - ".join(errs))
    t0 = time.monotonic()
    rc = cfg.report
    run_dir = str(cfg.run_dir)
    att = load_attribution(run_dir)
    selections, chosen, notes = find_selections(run_dir, rc.selection or None, cfg.selection_dir)
    masks = chosen.masks() if chosen else None
    joined, mask_notes = join_masks(att.segments, masks)
    notes += mask_notes
    if chosen and chosen.run_dir and Path(chosen.run_dir).resolve() != Path(run_dir).resolve():
        notes.append(f"selection {chosen.name} was made for run_dir={chosen.run_dir}, not {run_dir}")
    samples = sample_table(att, chosen)
    ov = overview(att)
    figures = _figures(joined, samples, ov, chosen)

    ids = pick_traces(samples, rc.max_traces)
    traces = []
    if ids:
        # CorpusError already says to set data.path; no row limit: the run may have used another.
        corpus, _ = read_corpus(cfg.data.path, cfg.data.fields, adapter=cfg.data.adapter)
        wanted = set(ids)
        by_id = {s.sample_id: s for s in corpus if s.sample_id in wanted}
        traces, trace_notes = build_traces(ids, joined, samples, att, by_id)
        notes += trace_notes
    token_note = _token_shading(traces, cfg, rc, ov["models"])
    a = cfg.attribute
    agreement = load_agreement(run_dir)
    evaluation = load_results(cfg.eval_dir)
    if evaluation is not None:
        figures["evaluation"] = (plots.accuracy_vs_length(evaluation.to_dicts()),
                                 f"{evaluation['model'].n_unique()} model(s) x {evaluation['benchmark'].n_unique()} benchmark(s)")
    page = Page(run_dir=run_dir, overview=ov, selections=selections, chosen=chosen, figures=figures, traces=traces,
                agreement=None if agreement is None else agreement.to_dicts(),
                evaluation=None if evaluation is None else evaluation.to_dicts(),
                pattern=resolve_pattern(a.segment_preset, a.segment_pattern),
                token_note=token_note, notes=notes, max_traces=rc.max_traces)
    text = render(page)
    out = Path(rc.path)
    write_text(out, text)
    log.info("report: %d traces, %d selection(s), %.1f MB in %.1f s -> %s", len(traces), len(selections),
             len(text.encode()) / 1e6, time.monotonic() - t0, out)
    for n in notes:
        log.info("report note: %s", n)
    return out

