"""The results table of stage=evaluate (one row per model and benchmark) and its printed form."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from segsft.schemas import RESULTS_SCHEMA


def bootstrap_ci(per_problem: np.ndarray, n: int, seed: int = 0) -> tuple[float, float]:
    """95% interval of the mean accuracy, resampling problems (each problem's mean over its k samples)."""
    if per_problem.size == 0:
        return float("nan"), float("nan")
    if n <= 0 or per_problem.size == 1:
        m = float(per_problem.mean())
        return m, m
    rng = np.random.default_rng(seed)
    means = per_problem[rng.integers(0, per_problem.size, size=(n, per_problem.size))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def results(gens: pl.DataFrame, bootstrap: int = 1000, seed: int = 0) -> pl.DataFrame:
    """RESULTS_SCHEMA rows from graded generations."""
    rows = []
    for (model, bench), g in gens.group_by(["model", "benchmark"], maintain_order=True):
        # Sorted by problem: the seeded bootstrap then draws the same problems whatever order the chunks hold them in.
        per = (g.group_by("problem_id").agg(pl.col("correct").cast(pl.Float64).mean())
               .sort("problem_id")["correct"].to_numpy())
        lo, hi = bootstrap_ci(per, bootstrap, seed)
        toks = g["output_tokens"].cast(pl.Float64)
        rows.append({"model": model, "benchmark": bench, "n_problems": g["problem_id"].n_unique(),
                     "samples": int(g.group_by("problem_id").len()["len"].max()),
                     "accuracy": float(g["correct"].cast(pl.Float64).mean()), "accuracy_ci_low": lo, "accuracy_ci_high": hi,
                     "mean_output_tokens": float(toks.mean()), "median_output_tokens": float(toks.median()),
                     "share_truncated": float((g["finish_reason"] == "length").cast(pl.Float64).mean())})
    return pl.DataFrame(rows, schema=pl.from_arrow(RESULTS_SCHEMA.empty_table()).schema)


def side_by_side(table: pl.DataFrame) -> str:
    """One row per benchmark; per model accuracy and mean output tokens, and the difference
    against the first model."""
    models = list(dict.fromkeys(table["model"].to_list()))
    benches = list(dict.fromkeys(table["benchmark"].to_list()))
    cell = {(r["model"], r["benchmark"]): r for r in table.iter_rows(named=True)}
    names = [m if len(m) <= 28 else "..." + m[-25:] for m in models]
    head = f"{'benchmark':<12}" + "".join(f" | {n:>28}" for n in names)
    sub = f"{'':<12}" + "".join(f" | {'acc %':>8} {'tokens':>8} {'vs first':>10}" for _ in models)
    lines = [head, sub, "-" * len(sub)]
    for b in benches:
        base = cell.get((models[0], b))
        line = f"{b:<12}"
        for m in models:
            r: Any = cell.get((m, b))
            if r is None:
                line += f" | {'-':>8} {'-':>8} {'':>10}"
                continue
            diff = ""
            if base is not None and m != models[0]:
                diff = f"{100 * (r['accuracy'] - base['accuracy']):+.1f}/{_pct(r, base)}"
            line += f" | {100 * r['accuracy']:>8.1f} {r['mean_output_tokens']:>8.0f} {diff:>10}"
        lines.append(line)
    lines.append("acc % = mean over k samples (pass@1); tokens = mean output length; vs first = accuracy points / "
                 "relative length against the first model")
    return "\n".join(lines)


def _pct(r: Any, base: Any) -> str:
    b = base["mean_output_tokens"]
    return f"{100 * (r['mean_output_tokens'] - b) / b:+.0f}%" if b else "-"
