"""The attribution stage over a corpus: one rank's deterministic shard, resumable.

Protocol (names in segsft.store.layout): flushed chunks of a part go to its partial directory;
a chunk counts only once its samples file exists (written last), so a kill between the
three writes leaves an orphan that the rerun removes. After the last flush the chunks are
merged into the part's tables, then its marker is written, then the chunks are removed.
Readers take finished parts only, so they never see a sample twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from segsft.method.adaptive import AdaptiveSettings
from segsft.method.batching import attribute_sequence, resolve_budget
from segsft.method.ig import check_supports_logits_to_keep, freeze
from segsft.method.metrics import segment_decider, segment_metrics
from segsft.method.token_stats import segment_token_stats, token_stats
from segsft.store.corpus import Reject, Sample, read_corpus
from segsft.errors import PipelineError
from segsft.run.dist import shard
from segsft.store.layout import AttributionLayout, RunLayout, part_name
from segsft.store.io import write_json, write_parquet
from segsft.schemas import REJECTS_SCHEMA, SAMPLES_SCHEMA, SEGMENTS_SCHEMA
from segsft.method.text import build_sequence, resolve_pattern

log = logging.getLogger(__name__)

TABLES = {"segments": SEGMENTS_SCHEMA, "rejects": REJECTS_SCHEMA, "samples": SAMPLES_SCHEMA}


def attribution_dir(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).attribution.dir


def _keys_in(paths: list[Path]) -> set[tuple[str, int | None]]:
    """(sample_id, source row) of every row of samples/rejects files (row None in a samples
    file written before it had the column: that id then matches any row)."""
    keys: set[tuple[str, int | None]] = set()
    for p in paths:
        names = pq.read_schema(p).names
        t = pq.read_table(p, columns=[c for c in ("sample_id", "row") if c in names])
        rows = t.column("row").to_pylist() if "row" in names else [None] * t.num_rows
        keys.update(zip(t.column("sample_id").to_pylist(), rows))
    return keys


def _has(keys: set[tuple[str, int | None]], item: Any) -> bool:
    return (item.sample_id, item.row) in keys or (item.sample_id, None) in keys


@dataclass
class _Buffer:
    segments: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples) + len(self.rejects)


class PartWriter:
    """Chunked, atomic, resumable output of one rank (the file names: segsft.store.layout)."""

    def __init__(self, out_dir: Path, rank: int, world: int):
        self.layout = AttributionLayout(out_dir)
        self.part = part_name(rank, world)
        self.partial = self.layout.partial(self.part)
        self.marker = self.layout.marker(self.part)
        self.reuse_finals = False

    def final(self, table: str) -> Path:
        return self.layout.table(table, self.part)

    def committed_chunks(self) -> list[int]:
        return self.layout.committed_chunks(self.part)

    def prepare(self) -> tuple[set[tuple[str, int | None]], set[tuple[str, int | None]]]:
        """Remove orphans of an interrupted flush; return the (sample_id, row) keys in this part's
        committed chunks and those that finished parts of other world sizes hold: neither is
        computed again."""
        self.partial.mkdir(parents=True, exist_ok=True)
        committed = set(self.committed_chunks())
        for chunk, files in self.layout.chunks(self.part).items():
            if chunk not in committed:
                for p in files.values():
                    log.warning("removing %s: its chunk was interrupted before it was committed", p)
                    p.unlink()
        for p in self.partial.glob(".*.tmp"):
            p.unlink()
        mine = _keys_in([self.layout.chunk(self.part, t, c) for c in committed for t in ("samples", "rejects")])
        # Killed after its merged tables were written (samples last) but before the marker:
        # the tables hold every chunk; keep them rather than redo their samples.
        self.reuse_finals = not committed and all(self.final(t).is_file() for t in TABLES)
        if self.reuse_finals:
            mine |= _keys_in([self.final(t) for t in ("samples", "rejects")])
        # Finished parts only: an unfinished one of another world size may never be finished.
        others = [p for p in self.layout.finished_parts() if p != self.part]
        elsewhere = _keys_in([self.layout.table(t, p) for p in others for t in ("samples", "rejects")])
        stale = [d for d in self.layout.partial_parts() if d != self.part]
        if stale:
            log.warning(
                "unfinished parts of another world size %s are ignored; their samples are redone here "
                "(delete them once every part of this run is done)", stale,
            )
        return mine, elsewhere

    def flush(self, buf: _Buffer) -> None:
        if not len(buf):
            return
        chunk = (self.committed_chunks() or [-1])[-1] + 1
        for table, schema in TABLES.items():  # samples last: it commits the chunk
            write_parquet(self.layout.chunk(self.part, table, chunk), getattr(buf, table), schema)
        buf.segments.clear()
        buf.samples.clear()
        buf.rejects.clear()

    def finish(self, summary: Mapping[str, Any]) -> None:
        """Merge the chunks into the part files, then mark the part complete."""
        chunks = self.committed_chunks()
        for table, schema in TABLES.items():
            paths = [self.layout.chunk(self.part, table, c) for c in chunks]
            if self.reuse_finals:
                paths.insert(0, self.final(table))
            merged = pa.concat_tables([pq.read_table(p, schema=schema) for p in paths]) if paths else schema.empty_table()
            write_parquet(self.final(table), merged, schema)
        write_json(self.marker, dict(summary))
        self.cleanup()

    def cleanup(self) -> None:
        """Remove the chunks of a complete part (they are all in its part files)."""
        if self.partial.exists():
            shutil.rmtree(self.partial)
        try:
            self.layout.partial_root.rmdir()
        except OSError:
            pass


class NothingScored(PipelineError):
    """Every input row of a part was rejected."""


class PartBusy(PipelineError):
    """Another live process writes this part of the run dir."""


@contextlib.contextmanager
def part_lock(layout: AttributionLayout, part: str) -> Iterator[None]:
    """Hold the OS lock of one part (per rank and world size) for the whole run. The OS
    releases it when the process dies, so a killed run never blocks its rerun; a second live
    writer is refused in one line naming the holder."""
    from filelock import FileLock, Timeout

    layout.dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.lock(part)))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            who = json.loads(layout.lock_holder(part).read_text())
            holder = f"PID {who.get('pid')} on host {who.get('host')}"
        except (OSError, ValueError):
            holder = "another process"
        raise PartBusy(f"part {part} of {layout.dir} is being written by {holder}: wait for it to finish or stop "
                       "it; two writers of one part would lose rows") from None
    try:
        write_json(layout.lock_holder(part), {"pid": os.getpid(), "host": socket.gethostname(),
                                              "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        yield
    finally:
        layout.lock_holder(part).unlink(missing_ok=True)
        lock.release()


def _token_stats(model: Any, ids: torch.Tensor, sample_id: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The cheap signals; out of memory leaves them null for this sample (the IG scores stand)."""
    try:
        return token_stats(model, ids)
    except torch.OutOfMemoryError:
        if ids.device.type == "cuda":
            torch.cuda.empty_cache()
        log.warning("sample %s: out of memory in the token-statistics pass; nll/entropy left null", sample_id)
        return None


def _reject_row(r: Reject) -> dict:
    return {"sample_id": r.sample_id, "reason": r.reason, "source": r.source, "row": r.row}


class AttributeStage:
    """DESIGN steps 1-6 for one rank: `AttributeStage(cfg).run(rank, world)`.

    `cfg` holds `run_dir`, `data` (path, fields), `model` (name_or_path, ...), `attribute`.
    """

    def __init__(self, cfg: Mapping[str, Any]):
        self.cfg = cfg
        self.acfg = cfg["attribute"]
        self.out_dir = attribution_dir(cfg["run_dir"])

    def run(self, rank: int = 0, world: int = 1, model: Any = None, tokenizer: Any = None) -> dict:
        writer = PartWriter(self.out_dir, rank, world)
        with part_lock(writer.layout, writer.part):
            return self._run_locked(writer, rank, world, model, tokenizer)

    def _run_locked(self, writer: "PartWriter", rank: int, world: int, model: Any, tokenizer: Any) -> dict:
        from segsft.store.fingerprint import check_or_store, fingerprint
        from segsft.run.dist import local_rank
        from segsft.run.models import pick_device, pick_dtype

        a = self.acfg
        if model is not None:
            device, dtype = model.get_input_embeddings().weight.device, model.dtype
        else:
            device = pick_device(a["device"], local_rank())
            dtype = pick_dtype(a["dtype"] or self.cfg["model"]["dtype"], device)
        # Before anything else, a finished part included: other settings must never pass as these.
        pattern = resolve_pattern(a["segment_preset"], a["segment_pattern"])
        check_or_store(writer.layout, fingerprint(self.cfg, str(dtype).removeprefix("torch."), getattr(pattern, "pattern", str(pattern))),
                       self.cfg["run_dir"])
        if writer.marker.exists():
            log.info("rank %d: part %s is complete (%s); nothing to do", rank, writer.part, writer.marker)
            writer.cleanup()  # a kill after the marker may have left the merged chunks behind
            return self._report_counts(writer, json.loads(writer.marker.read_text()))
        data = self.cfg["data"]
        samples, rejects = read_corpus(data["path"], data["fields"], data["limit"])
        rows: list[Sample | Reject] = sorted([*samples, *rejects], key=lambda r: r.row)
        mine = shard(rows, rank, world)
        done, elsewhere = writer.prepare()
        todo = [r for r in mine if not _has(done, r) and not _has(elsewhere, r)]
        in_other_parts = sum(_has(elsewhere, r) for r in mine)
        log.info(
            "rank %d/%d: %d input rows, %d in this shard, %d already done (%d of them in other parts), %d to do -> %s",
            rank, world, len(rows), len(mine), len(mine) - len(todo), in_other_parts, len(todo), self.out_dir,
        )
        if todo:
            if model is None or tokenizer is None:
                from segsft.run.models import load_model, load_tokenizer

                tokenizer = load_tokenizer(self.cfg["model"])
                model = load_model(self.cfg["model"], device, dtype)
            self._process(todo, writer, model, tokenizer, rank)
        summary = {"part": writer.part, "rows_in_shard": len(mine), "in_other_parts": in_other_parts, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if self.acfg["rule"] == "adaptive":
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
        pattern = resolve_pattern(a["segment_preset"], a["segment_pattern"])
        suffix = a["answer_suffix"]
        max_tokens = int(a["max_tokens"])
        ready, rejects = [], []
        for item in todo:
            if isinstance(item, Reject):
                rejects.append(_reject_row(item))
                continue
            try:
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
                rejects.append(_reject_row(Reject(item.sample_id, f"row {item.row}: {e}", item.source, item.row)))
                continue
            ready.append((item, seq))
        # Longest first: similar lengths batch alike, and memory trouble shows up at once.
        ready.sort(key=lambda x: (-len(x[1].input_ids), x[0].row))
        return ready, rejects

    def _process(self, todo: list[Sample | Reject], writer: PartWriter, model: Any, tokenizer: Any, rank: int) -> None:
        from segsft.run.models import pad_token_id

        a = self.acfg
        model_name = str(self.cfg["model"]["name_or_path"])
        check_supports_logits_to_keep(model)
        model.eval()
        freeze(model)
        device = model.get_input_embeddings().weight.device
        budget = resolve_budget(a["max_batch_tokens"], device)
        adaptive = AdaptiveSettings.from_cfg(a) if a["rule"] == "adaptive" else None
        unconverged: list[str] = []
        pad = pad_token_id(tokenizer)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        ready, rejects = self._prepare(todo, tokenizer, limit)
        buf = _Buffer(rejects=rejects)
        flush_every = max(1, int(a["flush_every"]))
        flush_seconds = float(a["flush_seconds"])
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
                        rule=a["rule"], steps=int(a["steps"]), baseline=a["baseline"], pad_id=pad,
                        batch_alphas=int(a["batch_alphas"]), max_batch_tokens=budget,
                        adaptive=adaptive, decide=self._decide(seq) if adaptive else None,
                        trace_tokens=seq.trace_tokens,
                    )
                except torch.OutOfMemoryError as e:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    buf.rejects.append(_reject_row(Reject(
                        item.sample_id, f"row {item.row}: out of memory at {n_fed} tokens even with one point per pass "
                        f"and checkpointing ({str(e).splitlines()[0]}); lower attribute.max_tokens", item.source, item.row)))
                else:
                    stats = _token_stats(model, ids, item.sample_id) if a["token_stats"] else None
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
                "rank %d: %d sample(s) did not converge within attribute.max_steps=%d (gap <= %s and decision "
                "stability >= %s): %s. select.unconverged=keep|full|drop decides what selection does with them; "
                "raise attribute.max_steps to refine them further", rank, len(unconverged), adaptive.max_steps,
                adaptive.target_gap, adaptive.target_stability, ", ".join(unconverged))

    def _select_config(self) -> Any:
        from segsft.method.selection_config import SelectConfig

        return SelectConfig.from_cfg(self.cfg["select"] or {})

    def _decide(self, seq: Any) -> Any:
        """The stop test's decision: the select rule with the configured select settings."""
        return segment_decider(seq.segment_tokens, self._select_config(), seq.train_tokens)

    def _rows(self, buf: _Buffer, item: Sample, seq: Any, res: Any, n_fed: int, model_name: str, seconds: float,
              stats: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        a = res.token_attr
        cheap = segment_token_stats(seq.segment_tokens, *(stats or (None, None)), res.grad_at_one)
        for k, (m, c, (cs, ce), (ts, te)) in enumerate(zip(segment_metrics(a, seq.segment_tokens), cheap,
                                                           seq.segment_chars, seq.segment_tokens)):
            buf.segments.append({"sample_id": item.sample_id, "segment": k, "char_start": cs, "char_end": ce,
                                 "token_start": ts, "token_end": te, **m, **c})
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
            "rule": self.acfg["rule"],
            # The adaptive rule's budget, or the fixed rule's node count.
            "steps": res.steps_used if self.acfg["rule"] != "adaptive" else int(self.acfg["max_steps"]),
            "model": model_name,
            "seconds": seconds,
            "steps_used": res.steps_used,
            "decision_stability": res.decision_stability,
            "converged": res.converged,
        })
