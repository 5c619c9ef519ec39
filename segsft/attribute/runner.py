"""The attribution stage over a corpus: one rank's deterministic shard, resumable through
the store (segsft.store.parts: chunks, completion marker, lock). Only the stage's loop is here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from segsft.method.adaptive import AdaptiveSettings
from segsft.method.batching import attribute_sequence, resolve_budget
from segsft.method.ig import check_supports_logits_to_keep, freeze
from segsft.method.metrics import SegmentRule, segment_metrics
from segsft.method.token_stats import segment_token_stats, token_stats
from segsft.store.corpus import Reject, Sample, read_corpus, reject_row
from segsft.config_schema import Settings
from segsft.errors import PipelineError
from segsft.store.layout import RunLayout
from segsft.store.io import write_json
from segsft.store.parts import TABLES, Buffer, PartWriter, has_key, part_lock
from segsft.method.length_guard import surely_too_long
from segsft.method.text import build_sequence, resolve_pattern

log = logging.getLogger(__name__)


def attribution_dir(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).attribution.dir


class NothingScored(PipelineError):
    """Every input row of a part was rejected."""


def _token_stats(model: Any, ids: torch.Tensor, sample_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cheap signals; out of memory leaves them null for this sample (the IG scores stand)."""
    try:
        return token_stats(model, ids)
    except torch.OutOfMemoryError:
        if ids.device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("sample %s: out of memory in the token-statistics pass; nll/entropy left null", sample_id)
        return None


class AttributeStage:
    """docs/method.md steps 1-6 for one rank: `AttributeStage(settings).run(rank, world)`, the
    loop of the attribute STAGE (the store's parts, chunks, markers and locks do the I/O).

    Reads `run_dir`, `data`, `model`, `attribute`, and `select` for the adaptive rule's stop
    test, of the typed Settings (a test's mapping of some keys is typed on the way in).
    """

    def __init__(self, cfg: Settings | Mapping[str, Any]):
        self.cfg = Settings.of(cfg)
        self.acfg = self.cfg.attribute
        self.out_dir = attribution_dir(self.cfg.run_dir)

    def run(self, rank: int = 0, world: int = 1, model: Any = None, tokenizer: Any = None) -> dict:
        writer = PartWriter(self.out_dir, rank, world)
        with part_lock(writer.layout, writer.part):
            return self._run_locked(writer, rank, world, model, tokenizer)

    def _run_locked(self, writer: "PartWriter", rank: int, world: int, model: Any, tokenizer: Any) -> dict:
        from segsft.store.fingerprint import check_or_store, fingerprint, holds_scores
        from segsft.run.dist import local_rank
        from segsft.run.models import pick_device, pick_dtype

        a = self.acfg
        if model is not None:
            device, dtype = model.get_input_embeddings().weight.device, model.dtype
        else:
            device = pick_device(a.device, local_rank())
            dtype = pick_dtype(a.dtype or self.cfg.model.dtype, device)
        # Before anything else, a finished part included: other settings must never pass as these.
        pattern = resolve_pattern(a.segment_preset, a.segment_pattern)
        check_or_store(writer.layout.fingerprint,
                       fingerprint(self.cfg, str(dtype).removeprefix("torch."), getattr(pattern, "pattern", str(pattern))),
                       "scores", "set a new run_dir=... to score with these settings, or restore them to resume or "
                       f"reuse {self.cfg.run_dir}", bound=lambda: holds_scores(writer.layout))
        if writer.marker.exists():
            log.info("rank %d: part %s is complete (%s); nothing to do", rank, writer.part, writer.marker)
            writer.cleanup()  # a kill after the marker may have left the merged chunks behind
            return self._report_counts(writer, json.loads(writer.marker.read_text()))
        data = self.cfg.data
        # Only this rank's rows (every world-th from row `rank`): a dataset is decoded shard first.
        samples, rejects = read_corpus(data.path, data.fields, data.limit, data.adapter, rank, world)
        mine: list[Sample | Reject] = sorted([*samples, *rejects], key=lambda r: r.row)
        done, elsewhere = writer.prepare()
        todo = [r for r in mine if not has_key(done, r) and not has_key(elsewhere, r)]
        in_other_parts = sum(has_key(elsewhere, r) for r in mine)
        log.info(
            "rank %d/%d: %d rows in this shard, %d already done (%d of them in other parts), %d to do -> %s",
            rank, world, len(mine), len(mine) - len(todo), in_other_parts, len(todo), self.out_dir,
        )
        if todo:
            if model is None or tokenizer is None:
                from segsft.run.models import load_model, load_tokenizer

                tokenizer = load_tokenizer(self.cfg.model)
                model = load_model(self.cfg.model, device, dtype)
            self._process(todo, writer, model, tokenizer, rank)
        summary = {"part": writer.part, "rows_in_shard": len(mine), "in_other_parts": in_other_parts, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if self.acfg.rule == "adaptive":
            # `converged` holds for these select settings; select warns when it runs with others.
            summary["stop_test_select"] = self._select_config().settings()
        writer.finish(summary)
        counts = {t: pq.read_metadata(writer.final(t)).num_rows for t in ("samples", "rejects")}
        summary.update(scored=counts["samples"], rejected=counts["rejects"])
        write_json(writer.marker, summary)
        log.info("rank %d: part %s complete: %s", rank, writer.part, [str(writer.final(t)) for t in TABLES])
        return self._report_counts(writer, summary)

    @staticmethod
    def _report_counts(writer: "PartWriter", summary: dict) -> dict:
        """Always say how many rows were scored and rejected; a part where none was scored fails."""
        rows, scored = summary.get("rows_in_shard", 0), summary.get("scored")
        elsewhere = summary.get("in_other_parts", 0)
        if scored is not None:
            other = f", {elsewhere} already in other parts" if elsewhere else ""
            print(f"attribute: part {writer.part}: {scored} scored, {summary.get('rejected')} rejected{other} of {rows} "
                  f"rows -> {writer.layout.dir}", flush=True)
        if rows > elsewhere and scored == 0:
            also = f" ({elsewhere} more are in other parts)" if elsewhere else ""
            raise NothingScored(f"every one of the {rows - elsewhere} rows of part {writer.part} was rejected{also}: see the reasons "
                                f"in {writer.final('rejects')} (e.g. attribute.max_tokens, data.fields)")
        return summary

    def _prepare(self, todo: list[Sample | Reject], tokenizer: Any, model_limit: int = 0) -> tuple[list[tuple[Sample, Any]], list[dict]]:
        """Tokenize every sample once; too long or unmappable ones become rejects."""
        a = self.acfg
        pattern = resolve_pattern(a.segment_preset, a.segment_pattern)
        suffix = a.answer_suffix
        max_tokens = int(a.max_tokens)
        ready, rejects = [], []
        for item in todo:
            if isinstance(item, Reject):
                rejects.append(reject_row(item))
                continue
            try:
                n_chars = len(item.question) + len(item.solution) + len(item.answer) + len(suffix)
                if surely_too_long(n_chars, max_tokens, tokenizer):
                    raise ValueError(
                        f"too long: {n_chars:,} characters, more than attribute.max_tokens={max_tokens} tokens can hold "
                        "(rejected before tokenizing; raise attribute.max_tokens to keep it)"
                    )
                seq = build_sequence(tokenizer, item.question, item.solution, pattern, item.answer, suffix)
                if max_tokens and len(seq.input_ids) > max_tokens:
                    raise ValueError(
                        f"too long: {len(seq.input_ids)} tokens > attribute.max_tokens={max_tokens} "
                        "(raise attribute.max_tokens to keep it)"
                    )
                if model_limit and len(seq.input_ids) > model_limit:
                    raise ValueError(
                        f"too long for the model: {len(seq.input_ids)} tokens > its max_position_embeddings="
                        f"{model_limit} (use a model with a longer context)"
                    )
            except ValueError as e:
                rejects.append(reject_row(Reject(item.sample_id, f"row {item.row}: {e}", item.source, item.row)))
                continue
            ready.append((item, seq))
        # Longest first: similar lengths batch alike, and memory trouble shows up at once.
        ready.sort(key=lambda x: (-len(x[1].input_ids), x[0].row))
        return ready, rejects

    def _process(self, todo: list[Sample | Reject], writer: PartWriter, model: Any, tokenizer: Any, rank: int) -> None:
        from segsft.run.models import pad_token_id

        a = self.acfg
        model_name = str(self.cfg.model.name_or_path)
        check_supports_logits_to_keep(model)
        model.eval()
        freeze(model)
        device = model.get_input_embeddings().weight.device
        budget = resolve_budget(a.max_batch_tokens, device)
        adaptive = AdaptiveSettings.from_cfg(a) if a.rule == "adaptive" else None
        unconverged: list[str] = []
        pad = pad_token_id(tokenizer)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        ready, rejects = self._prepare(todo, tokenizer, limit)
        buf = Buffer(rejects=rejects)
        flush_every = max(1, int(a.flush_every))
        flush_seconds = float(a.flush_seconds)
        last_flush = started = time.monotonic()
        tokens_done = 0
        bar = tqdm(total=len(todo), initial=len(rejects), desc=f"attribute rank {rank}", unit="sample", disable=rank != 0)
        try:
            for item, seq in ready:
                t0 = time.monotonic()
                n_fed = int(seq.answer_positions[-1]) + 1
                try:
                    ids = torch.as_tensor(seq.input_ids[:n_fed], device=device)
                    res = attribute_sequence(
                        model, ids,
                        torch.as_tensor(seq.answer_positions, device=device),
                        rule=a.rule, steps=int(a.steps), baseline=a.baseline, pad_id=pad,
                        batch_alphas=int(a.batch_alphas), max_batch_tokens=budget,
                        adaptive=adaptive, decide=self._decide(seq) if adaptive else None,
                        trace_tokens=seq.trace_tokens,
                    )
                except torch.OutOfMemoryError as e:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    buf.rejects.append(reject_row(Reject(
                        item.sample_id, f"row {item.row}: out of memory at {n_fed} tokens even with one point per pass "
                        f"and checkpointing ({str(e).splitlines()[0]}); lower attribute.max_tokens", item.source, item.row)))
                else:
                    stats = _token_stats(model, ids, item.sample_id) if a.token_stats else None
                    self._rows(buf, item, seq, res, n_fed, model_name, time.monotonic() - t0, stats)
                    tokens_done += n_fed
                    if res.converged is False:
                        unconverged.append(item.sample_id)
                bar.update(1)
                bar.set_postfix(tok_s=f"{tokens_done / max(time.monotonic() - started, 1e-9):.0f}")
                if len(buf) >= flush_every or time.monotonic() - last_flush > flush_seconds:
                    writer.flush(buf)
                    last_flush = time.monotonic()
            writer.flush(buf)
        finally:
            bar.close()  # before any error line, so the message is the last thing printed
        if unconverged:
            log.warning(
                "rank %d: %d sample(s) did not converge within attribute.max_steps=%d (error bound <= %s and "
                "settled decisions >= %s): %s. select.unconverged=keep|full|drop decides what selection does with them; "
                "raise attribute.max_steps to refine them further (their borderline flags say which decisions are "
                "open; docs/convergence.md has what each budget settles)", rank, len(unconverged), adaptive.max_steps,
                adaptive.target_gap, adaptive.target_stability, ", ".join(unconverged))

    def _select_config(self) -> Any:
        from segsft.method.selection_config import SelectConfig

        return SelectConfig.from_cfg(self.cfg.select)

    def _decide(self, seq: Any) -> Any:
        """The stop test's decision: the select rule with the configured select settings."""
        return SegmentRule(seq.segment_tokens, self._select_config(), seq.train_tokens)

    def _rows(self, buf: Buffer, item: Sample, seq: Any, res: Any, n_fed: int, model_name: str, seconds: float,
              stats: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        a = res.token_attr
        cheap = segment_token_stats(seq.segment_tokens, *(stats or (None, None)), res.grad_at_one)
        for k, (m, c, (cs, ce), (ts, te)) in enumerate(zip(segment_metrics(a, seq.segment_tokens), cheap,
                                                           seq.segment_chars, seq.segment_tokens)):
            buf.segments.append({"sample_id": item.sample_id, "segment": k, "char_start": cs, "char_end": ce,
                                 "token_start": ts, "token_end": te, **m, **c,
                                 "strength_err": None if res.strength_err is None else float(res.strength_err[k]),
                                 "borderline": None if res.borderline is None else bool(res.borderline[k])})
        if not np.isfinite(a).all():
            log.warning("sample %s: non-finite attributions (model dtype too narrow?)", item.sample_id)
        buf.samples.append({
            "sample_id": item.sample_id,
            "row": item.row,
            "n_tokens": n_fed,
            "train_tokens": seq.train_tokens,
            "n_segments": len(seq.segment_chars),
            "answer_logprob": res.answer_logprob,
            "baseline_logprob": res.baseline_logprob,
            "attr_total": float(a.sum()),
            "attr_norm": float(np.linalg.norm(a)),
            "completeness_gap": res.completeness_gap,
            "error_bound": res.error_bound,
            "rule": self.acfg.rule,
            # The adaptive rule's budget, or the fixed rule's node count.
            "steps": res.steps_used if self.acfg.rule != "adaptive" else int(self.acfg.max_steps),
            "model": model_name,
            "seconds": seconds,
            "steps_used": res.steps_used,
            "decision_stability": res.decision_stability,
            "converged": res.converged,
        })
