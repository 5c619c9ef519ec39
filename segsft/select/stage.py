"""The select stage: attribution tables -> `<selection_dir>/{masks.parquet, summary*, config.yaml}`."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import polars as pl
from omegaconf import OmegaConf

from segsft.config_schema import Settings

from segsft.errors import PipelineError
from segsft.store.io import write_json, write_parquet, write_text
from segsft.store.layout import AttributionLayout, SelectionLayout
from segsft.select.baselines import full_mask, random_mask, sample_keys, score_mask
from segsft.method.selection_config import SelectConfig
from segsft.store.attribution_tables import open_attribution
from segsft.method.rule import SID, always_keep, attribution_rule
from segsft.schemas import MASKS_SCHEMA, PER_SAMPLE_SCHEMA, SELECT_OPTIONAL_SEGMENT_COLUMNS, SELECT_SEGMENT_COLUMNS
from segsft.select.always_keep import warning as always_keep_warning
from segsft.select.summary import overall, per_sample

log = logging.getLogger(__name__)



class SelectionDirTaken(PipelineError):
    """selection_dir already holds a selection made with other settings."""


def select_masks(segments: pl.LazyFrame, cfg: SelectConfig, sample_tokens: pl.LazyFrame | None = None) -> dict[str, pl.DataFrame]:
    """The mask of `cfg.method` (key "mask"), plus the attribution rule's when random or score
    matched its budget. method=score needs `cfg.score` among the columns of `segments`."""
    if cfg.method == "full":
        return {"mask": full_mask(segments).collect(engine="streaming")}
    rule = attribution_rule(segments, cfg, sample_tokens).collect(engine="streaming")
    if cfg.method == "attribution":
        return {"mask": rule}
    if cfg.method == "score":
        scores = segments.select(SID, "segment", pl.col(cfg.score).cast(pl.Float64).alias("_score"))
        mask = score_mask(rule.lazy(), scores, cfg.always_keep, cfg.order == "high")
        return {"mask": mask.collect(engine="streaming"), "attribution": rule}
    keys = sample_keys(rule[SID].unique(maintain_order=True), cfg.seed).lazy()
    return {"mask": random_mask(rule.lazy(), keys).collect(engine="streaming"), "attribution": rule}


def _check_score_column(tables: Any, score: str) -> None:
    """select.score must be a column every segments file has, and not null everywhere."""
    import pyarrow.parquet as pq

    lacking = [str(p) for p in tables.segments if score not in pq.read_schema(p).names]
    if lacking:
        raise PipelineError(
            f"select.score={score}: the segments tables {lacking[:3]} lack that column (written before it existed); "
            "rerun attribution with this version into a new run_dir, or rank by another column")
    per = (tables.scan_segments((SID, score)).group_by(SID).agg(pl.col(score).fill_nan(None).count().alias("n"))
           .select(non_null=pl.col("n").sum(), empty=(pl.col("n") == 0).sum()).collect().row(0, named=True))
    if not per["non_null"]:
        why = {"nll_mean": "attribute.token_stats was false", "entropy_mean": "attribute.token_stats was false",
               "gxi_sum": "the rule has no node at alpha = 1 (gauss_legendre)",
               "gxi_abs_sum": "the rule has no node at alpha = 1 (gauss_legendre)"}.get(score, "no value was computed")
        raise PipelineError(f"select.score={score} is null in every segment of {tables.dir} ({why}): rank by another "
                            "column, or rerun attribution into a new run_dir to compute it")
    empty = per["empty"]
    if empty:
        log.warning("select: %d sample(s) have no %s value in any segment (e.g. the statistics pass ran out of "
                    "memory): their segments are ranked by index within the budget", empty, score)


def _check_strengths(segments: pl.LazyFrame, samples: pl.LazyFrame, adir: Path) -> None:
    """Refuse tables with samples but no segment; say how many strengths are not finite (the
    rule counts them as 0, docs/method.md step 7, which changes those samples' decisions)."""
    n_samples = samples.select(pl.len()).collect().item()
    counts = (segments.select(bad=(~pl.col("strength").is_finite()).fill_null(True), sid=pl.col(SID))
              .select(n=pl.len(), bad=pl.col("bad").sum(), bad_samples=pl.col("sid").filter(pl.col("bad")).n_unique())
              .collect().row(0, named=True))
    if n_samples and not counts["n"]:
        raise PipelineError(f"the attribution tables under {adir} hold {n_samples} sample(s) but no segment: they were "
                            "cut short or rewritten; rerun stage=attribute into a new run_dir")
    if counts["bad"]:
        log.warning("select: %d segment(s) of %d sample(s) have a strength that is NaN, infinite or null (the "
                    "attribution overflowed, e.g. in float16): the rule counts them as 0, so those samples' decisions "
                    "rest on their other segments; rerun their attribution with attribute.dtype=float32",
                    counts["bad"], counts["bad_samples"])


def apply_unconverged(mask: pl.DataFrame, unconverged: list[str], policy: str) -> pl.DataFrame:
    """select.unconverged: keep the decisions of samples whose adaptive attribution did not
    converge, train them in full (why=unconverged), or leave them out of the masks. A sample
    trained in full already (short_sample, method=full) keeps its reason."""
    if not unconverged or policy == "keep":
        return mask
    hit = pl.col(SID).is_in(unconverged)
    if policy == "drop":
        return mask.filter(~hit)
    relabel = hit & ~pl.col("why").is_in(["short_sample", "full"])
    return mask.with_columns(train=pl.col("train") | hit,
                             why=pl.when(relabel).then(pl.lit("unconverged")).otherwise(pl.col("why")))


def apply_borderline(mask: pl.DataFrame, policy: str, keep: tuple[int, ...] = ()) -> pl.DataFrame:
    """select.borderline: keep the rule's decision on a borderline segment and flag it (rule),
    or train it (keep) or not (drop) whatever the rule said (why=borderline where that changed
    the decision). Segments trained whatever the strengths (short samples, `keep` =
    select.always_keep) keep theirs."""
    if policy == "rule":
        return mask
    forced = pl.col("why").is_in(["short_sample", "full", "unconverged"]) | always_keep(keep)
    hit = pl.col("borderline") & ~forced
    want = pl.lit(policy == "keep")
    return mask.with_columns(why=pl.when(hit & (pl.col("train") != want)).then(pl.lit("borderline")).otherwise(pl.col("why")),
                             train=pl.when(hit).then(want).otherwise(pl.col("train")))


#: The settings that change a step-7 decision (what the stop test's stability is about).
_DECISION_KEYS = ("top_mass", "max_consistency", "min_consistency", "always_keep", "min_tokens")


def _stop_test_differs(adir: Path, cfg: SelectConfig) -> str:
    """'' when every finished part's stop test used this selection's decision settings, else
    the differences (parts of fixed rules have no stop test)."""
    lay, mine, diffs = AttributionLayout(adir), cfg.settings(), set()
    for part in lay.finished_parts():
        used = json.loads(lay.marker(part).read_text()).get("stop_test_select") or {}
        diffs |= {f"{k}: {used[k]!r} there, {mine[k]!r} here" for k in _DECISION_KEYS if k in used and used[k] != mine[k]}
    return "; ".join(sorted(diffs))


def _guard(lay: SelectionLayout, cfg: SelectConfig, run_dir: str) -> None:
    """Refuse to overwrite a selection of other settings: directory names show only some knobs."""
    out, saved = lay.dir, lay.config
    if not saved.is_file():
        return
    old = OmegaConf.load(saved)
    try:
        theirs = {**SelectConfig.from_cfg(old).settings(), "run_dir": str(old.get("run_dir"))}
    except (ValueError, KeyError):
        return  # not ours to judge; it is overwritten like any partial output
    mine = {**cfg.settings(), "run_dir": str(run_dir)}
    diff = {k: (theirs[k], mine[k]) for k in mine if theirs.get(k) != mine[k]}
    if diff:
        shown = ", ".join(f"{k}: {a!r} there, {b!r} here" for k, (a, b) in diff.items())
        raise SelectionDirTaken(
            f"{out} already holds a selection made with other settings ({shown}): pass "
            f"selection_dir=<another directory> (or select.name=<another name>), or delete {out}"
        )


def _figures(mask: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
    samples = per_sample(mask)
    return samples, overall(mask, samples)


def run(cfg: Settings | Any) -> dict:
    """Select with `cfg.select` on `cfg.run_dir`'s attribution; write and return the summary."""
    t0 = time.monotonic()
    cfg = Settings.of(cfg)
    scfg = SelectConfig.from_cfg(cfg)
    out = Path(str(cfg.selection_dir))
    lay = SelectionLayout(out)
    _guard(lay, scfg, str(cfg.run_dir))
    tables = open_attribution(cfg.run_dir)
    log.info("select: method=%s on %d part(s) in %s", scfg.method, len(tables.segments), tables.dir)
    for note in tables.notes:
        log.warning("select: %s", note)
    samples_in = tables.scan_samples()
    unconverged = samples_in.filter(pl.col("converged") == False).select(SID).collect()[SID].to_list()  # noqa: E712
    columns = SELECT_SEGMENT_COLUMNS
    if scfg.method == "score":
        _check_score_column(tables, scfg.score)
        columns = tuple(dict.fromkeys((*columns, scfg.score)))
    segments = tables.scan_segments(columns, SELECT_OPTIONAL_SEGMENT_COLUMNS)
    _check_strengths(segments, samples_in, tables.dir)
    masks = select_masks(segments, scfg, samples_in if scfg.min_tokens > 0 else None)
    masks = {k: apply_unconverged(apply_borderline(m, scfg.borderline, scfg.always_keep), unconverged, scfg.unconverged)
             for k, m in masks.items()}
    n_borderline = int(masks["mask"]["borderline"].sum())
    if n_borderline:
        log.info("select: %d segment(s) borderline (a decision within its quadrature error of flipping; "
                 "select.borderline=%s)", n_borderline, scfg.borderline)
    if unconverged:
        log.warning("select: %d sample(s) whose attribution did not converge (select.unconverged=%s; how far "
                    "attribute.max_steps settles them: docs/convergence.md, \"What a larger budget settles\"): %s",
                    len(unconverged), scfg.unconverged, ", ".join(unconverged[:20]) + (" ..." if len(unconverged) > 20 else ""))
    stale = _stop_test_differs(tables.dir, scfg)
    if stale:
        log.warning("select: the attribution's stop test judged convergence with other select settings (%s); "
                    "`converged` and decision_stability speak of those, not of this selection", stale)
    mask = masks["mask"]
    if (unused := always_keep_warning(mask, scfg.always_keep)):
        log.warning("select: %s", unused)
    samples, figures = _figures(mask)
    methods = {scfg.method: figures["overall"]}
    if "attribution" in masks:  # random, score: the rule's figures they were matched to, side by side
        methods["attribution"] = _figures(masks["attribution"])[1]["overall"]
    tokens, segs = figures["overall"]["tokens"], figures["overall"]["segments"]
    methods.setdefault("full", {"segments_kept": segs, "share_segments_kept": 1.0 if segs else None,
                                "tokens_kept": tokens, "share_tokens_kept": 1.0 if tokens else None})
    paths = {name: str(p) for name, p in lay.outputs().items()}
    summary = {
        "method": scfg.method,
        "settings": scfg.settings(),
        "run_dir": str(cfg.run_dir),
        "selection_dir": str(out),
        "attribution_parts": [str(p) for p in tables.segments],
        **figures,
        "unconverged": {"samples": len(unconverged), "policy": scfg.unconverged, "ids": unconverged},
        "borderline": {"segments": n_borderline, "policy": scfg.borderline},
        "methods": methods,
        "paths": paths,
        "seconds": round(time.monotonic() - t0, 3),
    }
    lay.marker.unlink(missing_ok=True)  # a rerun rewrites the files: unfinished until the marker is back
    write_parquet(lay.masks, mask.to_arrow(), MASKS_SCHEMA)
    write_parquet(lay.per_sample, samples.to_arrow(), PER_SAMPLE_SCHEMA)
    write_json(lay.summary, summary)
    # config.yaml, then the completion marker last: without the marker the selection is unfinished.
    write_text(lay.config, OmegaConf.to_yaml(OmegaConf.create(cfg.as_dict())))
    write_json(lay.marker, {"finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    o = figures["overall"]
    log.info(
        "select: %s of %s segments (%.1f%%), %s of %s tokens (%.1f%%) trained, %d short samples; wrote %s",
        o["segments_kept"], o["segments"], 100 * (o["share_segments_kept"] or 0), o["tokens_kept"], o["tokens"],
        100 * (o["share_tokens_kept"] or 0), o["short_samples"], ", ".join(paths.values()),
    )
    return summary
