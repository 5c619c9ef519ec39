"""The report's figures as PNG data URIs.

Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas directly: no pyplot,
so the process-wide backend and figure registry are left alone.
"""

from __future__ import annotations

import base64
import io

import numpy as np

KEPT, MASKED, UNMARKED = "#16a34a", "#dc2626", "#2563eb"
MAX_POINTS = 100_000  # beyond this a scatter is a blot and slow to draw; a seeded sample is shown


def _figure(w: float = 6.0, h: float = 3.6):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def gap_histogram(gaps: np.ndarray) -> str | None:
    """Histogram of log10 completeness gaps (they span orders of magnitude)."""
    gaps = np.asarray(gaps, dtype=float)
    gaps = gaps[np.isfinite(gaps)]
    if gaps.size == 0:
        return None
    fig = _figure(4.5, 2.4)
    ax = fig.add_subplot()
    ax.hist(np.log10(np.maximum(gaps, 1e-16)), bins=min(40, max(5, gaps.size)), color="#6b7280")
    ax.set_xlabel("log10 completeness gap")
    ax.set_ylabel("samples")
    return _png(fig)


def scatter(strength: np.ndarray, consistency: np.ndarray, train: np.ndarray | None,
            max_consistency: float | None, min_consistency: float | None, label: str = "") -> tuple[str, str]:
    """(data URI, caption) of strength vs consistency; colour = trained / masked by the selection."""
    x, y = np.asarray(strength, dtype=float), np.asarray(consistency, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)  # consistency is null where a segment has no attribution
    dropped = int((~ok).sum())
    x, y = x[ok], y[ok]
    t = None if train is None else np.asarray(train, dtype=object)[ok]
    n = x.size
    if n > MAX_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(n, MAX_POINTS, replace=False))
        x, y = x[keep], y[keep]
        t = None if t is None else t[keep]
    fig = _figure(5.4, 3.5)
    ax = fig.add_subplot()
    size = 12 if x.size < 2000 else 3
    if t is None:
        ax.scatter(x, y, s=size, c=UNMARKED, alpha=0.6, linewidths=0, label="segment (no selection)")
    else:
        for value, colour, name in ((False, MASKED, "masked"), (True, KEPT, "trained"), (None, "#9ca3af", "not in masks")):
            sel = np.array([v is value for v in t], dtype=bool)
            if sel.any():
                ax.scatter(x[sel], y[sel], s=size, c=colour, alpha=0.6, linewidths=0, label=f"{name} ({int(sel.sum())})")
    for v, name, style in ((max_consistency, "max_consistency", "--"), (min_consistency, "min_consistency", ":")):
        if v is not None:
            ax.axhline(float(v), color="#111827", linestyle=style, linewidth=1, label=f"{name} = {v:g}")
    if x.size and x.min() > 0 and x.max() / x.min() > 100:
        ax.set_xscale("log")  # strengths of long traces are small: a linear axis crowds them at 0
    ax.set_xlabel("strength")
    ax.set_ylabel("consistency")
    ax.set_ylim(-0.03, 1.03)
    if x.size:
        ax.legend(fontsize=7, loc="best", framealpha=0.8)
    ax.set_title(label, fontsize=9)
    caption = f"{n} segments"
    if n > MAX_POINTS:
        caption += f", a seeded sample of {MAX_POINTS} drawn"
    if dropped:
        caption += f"; {dropped} with null consistency (no attribution) not drawn"
    return _png(fig), caption


def share_histogram(shares: np.ndarray, label: str = "") -> str | None:
    """Histogram of the per-sample share of trace tokens trained."""
    s = np.asarray(shares, dtype=float)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return None
    fig = _figure(4.2, 3.5)
    ax = fig.add_subplot()
    ax.hist(s, bins=20, range=(0.0, 1.0), color=KEPT)
    ax.set_xlabel("share of trace tokens trained")
    ax.set_ylabel("samples")
    ax.set_title(label, fontsize=9)
    return _png(fig)


def signals_scatter(strength: np.ndarray, signals: dict[str, np.ndarray]) -> tuple[str | None, str]:
    """(data URI, caption): IG strength against each cheap signal, one panel each, with the
    Spearman correlation over the segments that have both."""
    panels = []
    for name, v in signals.items():
        x, y = np.asarray(strength, dtype=float), np.asarray(v, dtype=float)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 2:
            panels.append((name, x[ok], y[ok]))
    if not panels:
        return None, "no token statistics in this run (attribute.token_stats=false, or tables from before them)"
    fig = _figure(3.0 * len(panels), 2.8)
    rhos = []
    for i, (name, x, y) in enumerate(panels):
        if x.size > MAX_POINTS:
            keep = np.random.default_rng(0).choice(x.size, MAX_POINTS, replace=False)
            xs, ys = x[keep], y[keep]
        else:
            xs, ys = x, y
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.scatter(xs, ys, s=4 if xs.size > 2000 else 10, c=UNMARKED, alpha=0.5, linewidths=0)
        if xs.size and xs.min() > 0 and xs.max() / xs.min() > 100:
            ax.set_xscale("log")
        ax.set_xlabel("IG strength")
        ax.set_ylabel(name)
        rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
        rho = float(np.corrcoef(rx, ry)[0, 1]) if np.std(rx) and np.std(ry) else float("nan")
        rhos.append(f"{name} {rho:+.2f}")
        ax.set_title(f"Spearman {rho:+.2f}", fontsize=9)
    return _png(fig), f"{panels[0][1].size} segments; Spearman over all segments: " + ", ".join(rhos)


def accuracy_vs_length(rows: list[dict]) -> str | None:
    """Accuracy against mean output tokens, one marker per model and benchmark."""
    if not rows:
        return None
    fig = _figure(5.4, 3.5)
    ax = fig.add_subplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    marks = "osD^v<>p*h"
    for i, m in enumerate(models):
        pts = [r for r in rows if r["model"] == m]
        ax.scatter([r["mean_output_tokens"] for r in pts], [100 * r["accuracy"] for r in pts], marker=marks[i % len(marks)],
                   s=36, label=m if len(m) <= 40 else "..." + m[-37:])
        for r in pts:
            ax.annotate(r["benchmark"], (r["mean_output_tokens"], 100 * r["accuracy"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("mean output tokens")
    ax.set_ylabel("accuracy (%)")
    ax.legend(fontsize=7, loc="best", framealpha=0.8)
    return _png(fig)
