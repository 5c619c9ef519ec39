"""The end-of-run summary printed after `stage=all` (and so by `make demo`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segsft.config_schema import Settings

import polars as pl

from segsft.store.attribution_tables import open_attribution
from segsft.store.corpus import read_corpus
from segsft.schemas import ADAPTIVE_SAMPLE_COLUMNS, ADAPTIVE_SEGMENT_COLUMNS, REPORT_SAMPLE_COLUMNS, REPORT_SEGMENT_COLUMNS
from segsft.store.layout import FinetuneLayout, GenerationLayout, RunLayout, SelectionLayout


def _short(text: str, width: int = 90) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 3] + "..."


def convergence(smp: pl.DataFrame, seg: pl.DataFrame | None = None) -> dict[str, Any]:
    """Gradient evaluations per sample and the adaptive rule's stop test, from a samples table,
    and the borderline segments from a segments table (the demo's summary and the report both
    show these)."""
    steps = smp["steps_used"].drop_nulls()
    stab = smp["decision_stability"].drop_nulls()
    conv = smp["converged"].drop_nulls()
    return {
        "steps_median": float(steps.median()) if len(steps) else None,
        "steps_max": int(steps.max()) if len(steps) else None,
        "stability_median": float(stab.median()) if len(stab) else None,
        "adaptive_samples": len(conv),
        "unconverged": smp.filter(pl.col("converged") == False)["sample_id"].to_list(),  # noqa: E712
        "bound_median": (float(smp["error_bound"].drop_nulls().median())
                         if "error_bound" in smp.columns and smp["error_bound"].drop_nulls().len() else None),
        "borderline": (None if seg is None or "borderline" not in seg.columns or seg["borderline"].drop_nulls().len() == 0
                       else int(seg["borderline"].fill_null(False).sum())),
        "segments": None if seg is None else seg.height,
    }


def convergence_line(smp: pl.DataFrame, seg: pl.DataFrame | None = None) -> str:
    """Steps used, decision stability, convergence and borderline segments (any rule)."""
    c = convergence(smp, seg)
    rule = ", ".join(sorted(set(smp["rule"])))
    out = f"rule {rule}: gradient evaluations median {c['steps_median']:.0f} (max {c['steps_max']})"
    if c["adaptive_samples"]:
        out += (f", decision stability median {c['stability_median']:.2f}, converged "
                f"{c['adaptive_samples'] - len(c['unconverged'])} of {c['adaptive_samples']}")
    if c["bound_median"] is not None:
        out += f", error bound median {c['bound_median']:.2g}"
    if c["borderline"] is not None:
        out += f", borderline segments {c['borderline']} of {c['segments']}"
    gaps = smp["completeness_gap"].drop_nulls()
    if len(gaps):
        out += f", completeness gap median {gaps.median():.2g}"
    return out


def recap(cfg: "Settings") -> dict[str, Any]:
    """The end-of-run summary as data: attribution counts and convergence, per sample the
    segments and the kept share of tokens, the three strongest segments of one trace, the
    fine-tune's first and last loss, and where every output went."""
    run = RunLayout(cfg.run_dir)
    att = run.attribution
    sel = SelectionLayout(Path(cfg.selection_dir))
    ft = FinetuneLayout(Path(cfg.finetune_dir))
    # Finished parts only, each sample once (segsft.store.attribution_tables).
    tables = open_attribution(cfg.run_dir)
    seg = tables.scan_segments(REPORT_SEGMENT_COLUMNS, ADAPTIVE_SEGMENT_COLUMNS).collect()
    smp = tables.scan_samples(REPORT_SAMPLE_COLUMNS, ADAPTIVE_SAMPLE_COLUMNS).collect()
    out: dict[str, Any] = {"scored": smp.height, "rejected": tables.scan_rejects().collect().height,
                           "convergence": convergence(smp, seg) if smp.height else None,
                           "convergence_line": convergence_line(smp, seg) if smp.height else None}
    if sel.masks.exists() and sel.per_sample.exists():
        # The select stage already counted these; read them, don't recount the masks.
        per = pl.read_parquet(sel.per_sample).sort("sample_id")
        out["per_sample"] = [{k: r[k] for k in ("sample_id", "n_segments", "segments_kept", "share_tokens_kept")}
                             for r in per.iter_rows(named=True)]
        out["overall"] = json.loads(sel.summary.read_text())["overall"]
    if smp.height:
        sid = smp.sort("sample_id")["sample_id"][0]
        samples, _ = read_corpus(cfg.data.path, cfg.data.fields, cfg.data.limit, cfg.data.adapter)
        text = next((s.solution for s in samples if s.sample_id == sid), "")
        top = seg.filter(pl.col("sample_id") == sid).sort("strength", descending=True).head(3)
        out["strongest"] = {"sample_id": sid, "segments": [
            {"segment": r["segment"], "strength": r["strength"], "consistency": r["consistency"],
             "text": text[r["char_start"]:r["char_end"]]} for r in top.iter_rows(named=True)]}
    h = json.loads(ft.loss_history.read_text()) if ft.loss_history.exists() else {}
    out["loss"] = {"first": h.get("first_loss"), "last": h.get("last_loss")}
    gens, report = GenerationLayout(Path(cfg.eval_dir)), Path(cfg.report.path)
    out["outputs"] = {k: str(p) for k, p in (
        ("scores", att.pattern("segments")), ("masks", sel.masks), ("model", ft.model), ("eval", gens.results),
        ("report", report)) if k == "scores" or Path(p).exists()}
    return out


def summarize(r: dict[str, Any]) -> str:
    """`recap`'s data as the lines `stage=all` prints."""
    lines = [f"attribution: {r['scored']} samples scored, {r['rejected']} rejected"]
    if r["convergence_line"]:
        lines.append("  " + r["convergence_line"])
    if "per_sample" in r:
        lines.append(f"\n{'sample':<16} {'segments':>8} {'kept':>5} {'kept tokens':>12}")
        for p in r["per_sample"]:
            lines.append(f"{p['sample_id']:<16} {p['n_segments']:>8} {p['segments_kept']:>5} {p['share_tokens_kept'] or 0:>11.0%}")
        o = r["overall"]
        lines.append(f"{'overall':<16} {o['segments']:>8} {o['segments_kept']:>5} {o['share_tokens_kept'] or 0:>11.0%}")
    if "strongest" in r:
        lines.append(f"\nstrongest segments of {r['strongest']['sample_id']}:")
        for s in r["strongest"]["segments"]:
            c = "null" if s["consistency"] is None else f"{s['consistency']:.2f}"
            lines.append(f"  #{s['segment']:<3} strength {s['strength']:.3f}  consistency {c}  {_short(s['text'])!r}")
    if r["loss"]["first"] is not None and r["loss"]["last"] is not None:
        lines.append(f"\nfine-tune: loss {r['loss']['first']:.4f} at the first step -> {r['loss']['last']:.4f} at the last")
    lines.append("\noutputs:")
    o = r["outputs"]
    lines.append(f"  scores   {o['scores']} (and samples, rejects beside it)")
    for k in ("masks", "model", "eval", "report"):
        if k in o:
            lines.append(f"  {k:<8} {o[k]}")
    return "\n".join(lines)
