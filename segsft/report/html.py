"""Rendering the report page: one HTML string, inline CSS and JS, images as data URIs.

Every piece of text from the data goes through `esc`. Segment labels are CSS `::before`
content from a data attribute, so the text inside a trace is exactly the trace.
"""

from __future__ import annotations

import html
import math
from importlib import resources
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segsft.report.load import Selection
from segsft.report.view import Trace
from segsft.report.pieces import cut

# Nothing may load from elsewhere: the page must open offline, and a stray reference shows up
# as a CSP error in the browser console (which the browser test checks).
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"


def _asset(name: str) -> str:
    """A file shipped in segsft/report/assets (package data), inlined into the page."""
    return (resources.files("segsft.report") / "assets" / name).read_text(encoding="utf-8")


CSS = _asset("report.css")

JS = _asset("report.js")


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def fmt(x: Any, spec: str = ".4g") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return format(x, spec)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


@dataclass
class Page:
    run_dir: str
    overview: dict
    selections: list[Selection]
    chosen: Selection | None
    figures: dict[str, tuple[str | None, str]]  # name -> (data URI or None, caption)
    traces: list[Trace]
    pattern: re.Pattern[str]
    token_note: str | None = None  # why token shading is off; None: on
    notes: list[str] = field(default_factory=list)
    max_traces: int | None = None
    agreement: list[dict] | None = None  # stage=compare's rows, None before it ran
    evaluation: list[dict] | None = None  # stage=evaluate's results rows, None before it ran


# ---- a trace ------------------------------------------------------------------------------------

def _keyword(text: str, pattern: re.Pattern[str], cs: int, ce: int) -> tuple[int, int] | None:
    """The keyword starting the segment, without its leading blank lines (nothing to highlight there)."""
    m = pattern.match(text, cs)
    if not m or m.end() <= m.start() or m.end() > ce:
        return None
    g = m.group()
    ks = m.start() + len(g) - len(g.lstrip())
    return (ks, m.end()) if ks < m.end() else None


def _pieces(text: str, cs: int, ce: int, kw: tuple[int, int] | None,
            tokens: tuple[np.ndarray, list[float]] | None, amax: float, label_at: int, label: str) -> str:
    """The segment's text as HTML: the pieces of `pieces.cut`, each coloured by its token;
    the (empty) label element goes in at `label_at`."""
    out = []
    for pc in cut(cs, ce, kw, None if tokens is None else tokens[0].tolist(), None if tokens is None else tokens[1],
                  label_at):
        if pc.label_before:
            out.append(_label(label))
        piece = esc(text[pc.start:pc.end])
        cls, style = [], ""
        if pc.value is not None:
            v = pc.value
            alpha = min(1.0, abs(v) / amax) if amax > 0 and math.isfinite(v) else 0.0
            cls.append("p" if v > 0 else "n" if v < 0 else "z")
            # Terse on purpose: one of these per token, ~10k tokens per trace.
            style = f" style=--a:{alpha:.2f}".replace(":0.", ":.")
        if pc.keyword:
            cls.append("kw")
        if not cls:
            out.append(piece)
        elif len(cls) == 1:
            out.append(f"<span class={cls[0]}{style}>{piece}</span>")
        else:
            out.append(f'<span class="{" ".join(cls)}"{style}>{piece}</span>')
    return "".join(out)


def _label(text: str) -> str:
    # Empty: CSS draws its data-label, so the text inside a trace stays exactly the trace.
    return f'<span class="lab" data-label="{esc(text)}"></span>'


def token_scale(values: list[float]) -> float:
    """|a_t| that gets full colour: the trace's 99th percentile of |a_t| (its largest when that is 0).

    IG often puts most of the mass on a handful of tokens; scaling by the largest would leave
    every other token of a 10k-token trace invisible."""
    a = np.abs(np.asarray(values, dtype=float))
    a = a[np.isfinite(a)]
    if a.size == 0:
        return 0.0
    q = float(np.quantile(a, 0.99))
    return q if q > 0 else float(a.max())


def segment_shade(strength: float, strongest: float) -> float:
    """Background alpha of a segment: strictly increasing in strength within a trace."""
    if not (strongest > 0) or not math.isfinite(strength):
        return 0.06
    return 0.06 + 0.74 * max(0.0, min(1.0, strength / strongest))


def _segment(text: str, r: dict, shade: float, pattern: re.Pattern[str],
             tokens: tuple[np.ndarray, list[float]] | None, amax: float) -> str:
    k, cs, ce = r["segment"], int(r["char_start"]), int(r["char_end"])
    train, why = r.get("train"), r.get("why")
    c = r["consistency"]
    state = {True: ("trained", "✓"), False: ("masked", "✗")}.get(train)
    border = bool(r.get("borderline"))
    label = f"#{k}" + (f" {state[1]} {why}" if state else "") + (" ≈ borderline" if border else "")
    err = r.get("strength_err")
    title = (f"segment {k} · strength {fmt(r['strength'])}" + ("" if err is None else f" ± {fmt(err)}")
             + f" · consistency {fmt(c, '.3f') if c is not None else 'null'}"
             f" · {r['n_tokens']} tokens" + (f" · {state[0]} ({why})" if state else "")
             + (" · borderline: the decision is within its quadrature error of flipping" if border else ""))
    attrs = {
        "class": "seg" + (f" {state[0]}" if state else "") + (" borderline" if border else ""),
        "data-borderline": "1" if border else "0",
        "data-sample": r["sample_id"], "data-segment": k,
        "data-strength": repr(float(r["strength"])), "data-consistency": "" if c is None else repr(float(c)),
        "data-train": {True: "1", False: "0"}.get(train, ""), "data-why": why or "",
        "title": title, "style": f"--s:{shade:.3f}",
    }
    head = " ".join(f'{a}="{esc(v)}"' for a, v in attrs.items())
    # The label goes after the blank lines that open the segment, so it starts the segment's first
    # visible line instead of trailing the previous segment.
    body = text[cs:ce]
    label_at = cs + len(body) - len(body.lstrip("\r\n")) if body.strip() else cs
    return f"<span {head}>{_pieces(text, cs, ce, _keyword(text, pattern, cs, ce), tokens, amax, label_at, label)}</span>"


def _trace(i: int, tr: Trace, pattern: re.Pattern[str]) -> str:
    strengths = [float(r["strength"]) for r in tr.segments]
    strongest = max((s for s in strengths if math.isfinite(s)), default=0.0)
    amax = token_scale([v for r in tr.segments for v in r["token_attr"]]) if tr.token_starts is not None else 0.0
    segs = "".join(
        _segment(tr.solution, r, segment_shade(s, strongest), pattern,
                 None if tr.token_starts is None else (tr.token_starts[j], r["token_attr"]), amax)
        for j, (r, s) in enumerate(zip(tr.segments, strengths))
    )
    kept = sum(1 for r in tr.segments if r.get("train"))
    meta = (f"{len(tr.segments)} segments, {kept} trained · {tr.n_tokens} sequence tokens · "
            f"kept token share {pct(tr.share_tokens_kept)} · completeness gap {fmt(tr.completeness_gap, '.2e')} · "
            f"{fmt(tr.steps_used, 'd')} gradient evaluations"
            + ("" if tr.converged is None else
               f" · decision stability {fmt(tr.decision_stability, '.2f')} · {'converged' if tr.converged else 'NOT converged'}")
            + f" · answer {tr.answer}")
    notes = "".join(f'<p class="notes">{esc(n)}</p>' for n in tr.notes)
    return (f'<section class="trace" id="t{i}" data-sample="{esc(tr.sample_id)}" '
            f'data-kept-share="{"" if tr.share_tokens_kept is None else tr.share_tokens_kept}">'
            f"<h3>{esc(tr.sample_id)}</h3><p class=\"meta\">{esc(meta)}</p>{notes}"
            f'<div class="question">{esc(tr.question)}</div>'
            f'<div class="tt">{segs}</div></section>')


# ---- the page -----------------------------------------------------------------------------------

def _table(head: list[str] | None, rows: list[list[str]], left: int = 1, row_class: list[str] | None = None) -> str:
    th = "".join(f'<th class="{"l" if j < left else ""}">{esc(h)}</th>' for j, h in enumerate(head or []))
    body = "".join(
        f'<tr class="{(row_class or [""] * len(rows))[i]}">'
        + "".join(f'<td class="{"l" if j < left else ""}">{c}</td>' for j, c in enumerate(r)) + "</tr>"
        for i, r in enumerate(rows))
    thead = f"<thead><tr>{th}</tr></thead>" if head else ""
    return f"<table>{thead}<tbody>{body}</tbody></table>"


def _overview(p: Page) -> str:
    o = p.overview
    sp = o["segments_per_sample"] or {}
    rows = [
        ["samples scored", esc(o["samples"])], ["rejected rows", esc(o["rejects"])],
        ["sequence tokens (prompt + trace + answer)", esc(o["sequence_tokens"])],
        ["trace tokens (in segments)", esc(o["trace_tokens"])], ["segments", esc(o["segments"])],
        ["segments per sample: mean / min / max",
         esc(f"{fmt(sp.get('mean'), '.1f')} / {fmt(sp.get('min'), 'd')} / {fmt(sp.get('max'), 'd')}")],
        ["quadrature", esc(", ".join(o["rules"]))], ["model", esc(", ".join(o["models"]))],
    ]
    out = ["<h2 id=\"overview\">Overview</h2>", f'<p class="meta">run {esc(p.run_dir)}</p>', _table(None, rows)]
    if o["reject_reasons"]:
        out.append("<h3>Rejects by reason</h3>")
        out.append(_table(["reason", "rows"], [[esc(r), esc(n)] for r, n in o["reject_reasons"]]))
    cv = o["convergence"]
    out.append("<h3>Convergence</h3>")
    crow = [["gradient evaluations per sample: median / max", esc(f"{fmt(cv['steps_median'], '.0f')} / {fmt(cv['steps_max'], 'd')}")]]
    if cv["adaptive_samples"]:
        crow += [["decision stability at the last doubling: median", esc(fmt(cv["stability_median"], ".2f"))],
                 ["error bound (sum of |local errors| / |f(x) - f(x')|): median", esc(fmt(cv["bound_median"], ".2g"))],
                 ["borderline segments (decision within its quadrature error of flipping)",
                  esc(f"{fmt(cv['borderline'], 'd')} of {fmt(cv['segments'], 'd')}")],
                 ["samples that did not converge (attribute.rule=adaptive)",
                  esc(f"{len(cv['unconverged'])} of {cv['adaptive_samples']}"
                      + (f": {', '.join(cv['unconverged'][:10])}" if cv["unconverged"] else ""))]]
    out.append(_table(None, crow))
    out.append("<h3>Completeness gap</h3>")
    gq = o["gap_quantiles"]
    if gq:
        out.append(_table(list(gq), [[esc(fmt(v, ".2e")) for v in gq.values()]], left=0))
    if o["gap_nulls"]:
        out.append(f'<p class="meta">{o["gap_nulls"]} sample(s) without a gap (f(x) = f(x\'))</p>')
    uri, cap = p.figures.get("gaps", (None, ""))
    if uri:
        out.append(f'<figure><img alt="completeness gap histogram" src="{uri}"><figcaption>{esc(cap)}</figcaption></figure>')
    out.append("<h3>Selections</h3>")
    if p.selections:
        head = ["selection", "sweep job", "method", "top_mass", "max_consistency", "min_consistency", "always_keep",
                "min_tokens", "seed", "unconverged", "segments kept", "tokens kept"]
        rows, cls = [], []
        for s in p.selections:
            st = s.settings
            rows.append([esc(s.name) + (" ★" if s is p.chosen else ""), esc(fmt(s.job, "d")), esc(st.get("method")),
                         esc(fmt(st.get("top_mass"), "g")), esc(fmt(st.get("max_consistency"), "g")),
                         esc(fmt(st.get("min_consistency"), "g")), esc(st.get("always_keep")),
                         esc(fmt(st.get("min_tokens"), "d")), esc(fmt(st.get("seed"), "d")), esc(st.get("unconverged")),
                         esc(f"{pct(s.share_segments)} ({s.segments_kept}/{s.segments})"),
                         esc(f"{pct(s.share_tokens)} ({s.tokens_kept}/{s.tokens})")])
            cls.append("chosen" if s is p.chosen else "")
        out.append(f'<div class="wide">{_table(head, rows, row_class=cls)}</div>')
        out.append('<p class="meta">★ the selection shown in the scatter and the traces</p>')
    else:
        out.append('<p class="meta">no selection</p>')
    out.append(_agreement(p))
    out.append(_evaluation(p))
    return "".join(out)


def _evaluation(p: Page) -> str:
    out = ['<h3 id="evaluation">Evaluation</h3>']
    if not p.evaluation:
        out.append('<p class="meta">not evaluated: run <code>python pipeline.py stage=evaluate run_dir=...</code></p>')
        return "".join(out)
    models = list(dict.fromkeys(r["model"] for r in p.evaluation))
    cell = {(r["model"], r["benchmark"]): r for r in p.evaluation}
    head = ["benchmark"] + [f"{m}: accuracy (95% CI) / mean tokens" for m in models[:1]] + [
        f"{m}: accuracy / mean tokens / vs first" for m in models[1:]]
    rows = []
    for b in dict.fromkeys(r["benchmark"] for r in p.evaluation):
        row, base = [esc(b)], cell.get((models[0], b))
        for m in models:
            r = cell.get((m, b))
            if r is None:
                row.append("-")
                continue
            txt = (f"{100 * r['accuracy']:.1f}% ({100 * r['accuracy_ci_low']:.1f}-{100 * r['accuracy_ci_high']:.1f}) / "
                   f"{r['mean_output_tokens']:.0f}")
            if m != models[0] and base is not None:
                rel = (f"{100 * (r['mean_output_tokens'] - base['mean_output_tokens']) / base['mean_output_tokens']:+.0f}%"
                       if base["mean_output_tokens"] else "-")
                txt += f" / {100 * (r['accuracy'] - base['accuracy']):+.1f} pts, {rel} tokens"
            row.append(esc(txt))
        rows.append(row)
    out.append(f'<div class="wide">{_table(head, rows)}</div>')
    out.append('<p class="meta">accuracy: mean over the k samples per problem (pass@1); interval: bootstrap over '
               "problems; tokens: mean output length</p>")
    uri, cap = p.figures.get("evaluation", (None, ""))
    if uri:
        out.append(f'<figure><img alt="accuracy vs mean output length" src="{uri}"><figcaption>{esc(cap)}</figcaption></figure>')
    return "".join(out)


def _agreement(p: Page) -> str:
    out = ['<h3 id="agreement">Agreement between selections</h3>']
    if not p.agreement:
        out.append('<p class="meta">not computed: run <code>python pipeline.py stage=compare run_dir=...</code> '
                   "after selecting with several methods</p>")
        return "".join(out)
    head = ["a", "b", "samples", "Jaccard of kept segments: mean", "median", "Spearman of scores: mean", "median"]
    rows = [[esc(r["a"]), esc(r["b"]), esc(r["samples"]), esc(fmt(r["jaccard_mean"], ".3f")),
             esc(fmt(r["jaccard_median"], ".3f")), esc(fmt(r["spearman_mean"], ".3f")),
             esc(fmt(r["spearman_median"], ".3f"))] for r in p.agreement]
    out.append(f'<div class="wide">{_table(head, rows, left=2)}</div>')
    out.append('<p class="meta">per sample, then over the samples both cover; Spearman where both rank by a '
               "score (attribution: strength; score: its column), — where one does not (random, full)</p>")
    return "".join(out)


def _figures(p: Page) -> str:
    out = ['<h2 id="figures">Figures</h2><div class="figs">']
    for key, alt in (("scatter", "strength vs consistency of every segment"),
                     ("shares", "histogram of the kept-token share per sample"),
                     ("signals", "IG strength against the cheap per-segment signals")):
        uri, cap = p.figures.get(key, (None, ""))
        if uri:
            out.append(f'<figure><img alt="{esc(alt)}" src="{uri}"><figcaption>{esc(cap)}</figcaption></figure>')
        elif cap:
            out.append(f'<p class="meta">{esc(cap)}</p>')
    out.append("</div>")
    return "".join(out)


def _legend(p: Page) -> str:
    tok = ("" if p.token_note else
           '<span><i class="sw" style="background:#2563eb"></i><i class="sw" style="background:#dc2626"></i>'
           "tokens (toggle): blue positive, red negative a<sub>t</sub>, full colour from the trace's 99th percentile "
           "of |a<sub>t</sub>| up</span>")
    return ('<p class="legend">'
            '<span><i class="sw" style="background:rgba(245,158,11,.8)"></i>segment strength (relative to the '
            "trace's strongest segment)</span>"
            '<span style="border-bottom:2px solid #16a34a">trained</span> '
            '<span style="border-bottom:2px dashed #dc2626">masked, with its reason</span> '
            '<span class="kw">keyword</span> — hover a segment for its strength and consistency. '
            f"{tok}</p>")


def render(p: Page) -> str:
    """The whole page."""
    n = p.overview["samples"]
    nav = "".join(f'<li><a href="#t{i}">{esc(t.sample_id)}</a> <span class="share">{pct(t.share_tokens_kept)}</span></li>'
                  for i, t in enumerate(p.traces))
    shown = f"{len(p.traces)} of {n} traces"
    if p.max_traces is not None and n > p.max_traces:
        shown += f" (report.max_traces={p.max_traces}, spread evenly over the kept-share order)"
    if p.token_note:
        toggle = f'<span title="{esc(p.token_note)}">token shading off: {esc(p.token_note)}</span>'
    else:
        toggle = '<label><input type="checkbox" id="tok-toggle"> shade tokens by attribution (red −, blue +)</label>'
    notes = ('<div class="notes"><b>Notes</b><ul>' + "".join(f"<li>{esc(x)}</li>" for x in p.notes) + "</ul></div>"
             if p.notes else "")
    chosen = f" — selection {esc(p.chosen.name)}" if p.chosen else ""
    traces = "".join(_trace(i, t, p.pattern) for i, t in enumerate(p.traces))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>segsft report — {esc(p.run_dir)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>Attribution report — {esc(p.run_dir)}{chosen}</h1>{toggle}</header>"
        '<div class="layout"><nav id="jump"><b>Traces by kept share</b>'
        f'<p class="meta">{esc(shown)}</p><ol>{nav}</ol></nav><div class="content">'
        f"{notes}{_overview(p)}{_figures(p)}"
        f'<h2 id="traces">Traces</h2><p class="meta">{esc(shown)}</p>{_legend(p)}{traces}'
        f"</div></div><script>{JS}</script></body></html>\n"
    )
