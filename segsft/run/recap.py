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


def summarize(cfg: "Settings") -> str:
    """Per sample: segments and the kept share of tokens; the three strongest segments of
    one trace; the fine-tune's first and last loss; where every output went."""
    run = RunLayout(cfg.run_dir)
    att = run.attribution
    sel = SelectionLayout(Path(cfg.selection_dir))
    ft = FinetuneLayout(Path(cfg.finetune_dir))
    lines: list[str] = []
    # Finished parts only, each sample once (segsft.store.attribution_tables).
    tables = open_attribution(cfg.run_dir)
    seg = tables.scan_segments(REPORT_SEGMENT_COLUMNS, ADAPTIVE_SEGMENT_COLUMNS).collect()
    smp = tables.scan_samples(REPORT_SAMPLE_COLUMNS, ADAPTIVE_SAMPLE_COLUMNS).collect()
    rej = tables.scan_rejects().collect()
    lines.append(f"attribution: {smp.height} samples scored, {rej.height} rejected")
    if smp.height:
        lines.append("  " + convergence_line(smp, seg))
    masks_path = sel.masks
    per_path = sel.per_sample
    if masks_path.exists() and per_path.exists():
        # The select stage already counted these; read them, don't recount the masks.
        per = pl.read_parquet(per_path).sort("sample_id")
        overall = json.loads(sel.summary.read_text())["overall"]
        lines.append(f"\n{'sample':<16} {'segments':>8} {'kept':>5} {'kept tokens':>12}")
        for r in per.iter_rows(named=True):
            lines.append(f"{r['sample_id']:<16} {r['n_segments']:>8} {r['segments_kept']:>5} {r['share_tokens_kept'] or 0:>11.0%}")
        lines.append(f"{'overall':<16} {overall['segments']:>8} {overall['segments_kept']:>5} "
                     f"{overall['share_tokens_kept'] or 0:>11.0%}")
    if smp.height:
        sid = smp.sort("sample_id")["sample_id"][0]
        samples, _ = read_corpus(cfg.data.path, cfg.data.fields, cfg.data.limit, cfg.data.adapter)
        text = next((s.solution for s in samples if s.sample_id == sid), "")
        top = seg.filter(pl.col("sample_id") == sid).sort("strength", descending=True).head(3)
        lines.append(f"\nstrongest segments of {sid}:")
        for r in top.iter_rows(named=True):
            c = "null" if r["consistency"] is None else f"{r['consistency']:.2f}"
            lines.append(f"  #{r['segment']:<3} strength {r['strength']:.3f}  consistency {c}  "
                         f"{_short(text[r['char_start']:r['char_end']])!r}")
    hist = ft.loss_history
    h = json.loads(hist.read_text()) if hist.exists() else {}
    if h.get("first_loss") is not None and h.get("last_loss") is not None:
        lines.append(f"\nfine-tune: loss {h.get('first_loss'):.4f} at the first step -> {h.get('last_loss'):.4f} at the last")
    lines.append("\noutputs:")
    lines.append(f"  scores   {att.pattern('segments')} (and {', '.join(Path(att.pattern(t)).name for t in ('samples', 'rejects'))})")
    if masks_path.exists():
        lines.append(f"  masks    {masks_path}")
    if ft.model.exists():
        lines.append(f"  model    {ft.model}")
    gens = GenerationLayout(Path(cfg.eval_dir))
    if gens.results.exists():
        lines.append(f"  eval     {gens.results} (and {gens.pattern.name} beside it)")
    report = Path(cfg.report.path)
    if report.exists():
        lines.append(f"  report   {report}")
    return "\n".join(lines)
