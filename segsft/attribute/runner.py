"""The attribution stage over a corpus: one rank's deterministic shard, resumable.

Protocol (names in segsft.layout): flushed chunks of a part go to its partial directory;
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

from segsft.attribute.adaptive import AdaptiveSettings
from segsft.attribute.batching import attribute_sequence, resolve_budget
from segsft.attribute.ig import check_supports_logits_to_keep, freeze
from segsft.attribute.metrics import segment_decider, segment_metrics
from segsft.corpus import Reject, Sample, read_corpus
from segsft.errors import PipelineError
from segsft.dist import shard
from segsft.layout import AttributionLayout, RunLayout, part_name
from segsft.io import write_json, write_parquet
from segsft.schemas import REJECTS_SCHEMA, SAMPLES_SCHEMA, SEGMENTS_SCHEMA
from segsft.text import ANSWER_SUFFIX_DEFAULT, build_sequence, resolve_pattern

log = logging.getLogger(__name__)

TABLES = {"segments": SEGMENTS_SCHEMA, "rejects": REJECTS_SCHEMA, "samples": SAMPLES_SCHEMA}


def attribution_dir(run_dir: str | Path) -> Path:
    return RunLayout(run_dir).attribution.dir


def _ids_in(paths: list[Path]) -> set[str]:
    ids: set[str] = set()
    for p in paths:
        ids.update(pq.read_table(p, columns=["sample_id"]).column("sample_id").to_pylist())
    return ids


@dataclass
class _Buffer:
    segments: list[dict] = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples) + len(self.rejects)


class PartWriter:
    """Chunked, atomic, resumable output of one rank (the file names: segsft.layout)."""

    def __init__(self, out_dir: Path, rank: int, world: int):
        self.layout = AttributionLayout(out_dir)
        self.part = part_name(rank, world)
        self.partial = self.layout.partial(self.part)
        self.marker = self.layout.marker(self.part)

    def final(self, table: str) -> Path:
        return self.layout.table(table, self.part)

    def committed_chunks(self) -> list[int]:
        return self.layout.committed_chunks(self.part)

    def prepare(self) -> set[str]:
        """Remove orphans of an interrupted flush; return the ids already done anywhere."""
        self.partial.mkdir(parents=True, exist_ok=True)
        committed = set(self.committed_chunks())
        for chunk, files in self.layout.chunks(self.part).items():
            if chunk not in committed:
                for p in files.values():
                    log.warning("removing %s: its chunk was interrupted before it was committed", p)
                    p.unlink()
        for p in self.partial.glob(".*.tmp"):
            p.unlink()
        done = _ids_in([self.layout.chunk(self.part, t, c) for c in committed for t in ("samples", "rejects")])
        files = self.layout.table_files()
        done |= _ids_in([p for t in ("samples", "rejects") for part, p in files[t].items() if part != self.part])
        stale = [d for d in self.layout.partial_parts() if d != self.part]
        if stale:
            log.warning(
                "unfinished parts of another world size %s are ignored; their samples are redone here "
                "(delete them once every part of this run is done)", stale,
            )
        return done

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


def adaptive_settings(a: Mapping[str, Any]) -> AdaptiveSettings:
    """The adaptive rule's settings from the `attribute` node (dataclass defaults for absent keys)."""
    d = AdaptiveSettings()
    return AdaptiveSettings(
        target_gap=float(a.get("target_gap", d.target_gap)),
        target_stability=float(a.get("target_stability", d.target_stability)),
        max_steps=int(a.get("max_steps", d.max_steps)),
        init_points=int(a.get("init_points", d.init_points)),
        stable_ranks=bool(a.get("stable_ranks", d.stable_ranks)),
        per_round=None if a.get("per_round") is None else int(a["per_round"]),
    )


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
        if writer.marker.exists():
            log.info("rank %d: part %s is complete (%s); nothing to do", rank, writer.part, writer.marker)
            writer.cleanup()  # a kill after the marker may have left the merged chunks behind
            return self._report_counts(writer, json.loads(writer.marker.read_text()))
        data = self.cfg["data"]
        samples, rejects = read_corpus(data["path"], data.get("fields") or {}, data.get("limit"))
        rows: list[Sample | Reject] = sorted([*samples, *rejects], key=lambda r: r.row)
        mine = shard(rows, rank, world)
        done = writer.prepare()
        todo = [r for r in mine if r.sample_id not in done]
        log.info(
            "rank %d/%d: %d input rows, %d in this shard, %d already done, %d to do -> %s",
            rank, world, len(rows), len(mine), len(mine) - len(todo), len(todo), self.out_dir,
        )
        if todo:
            if model is None or tokenizer is None:
                from segsft.dist import local_rank
                from segsft.models import load_model, load_tokenizer, pick_device, pick_dtype

                device = pick_device(self.acfg.get("device", "auto"), local_rank())
                tokenizer = load_tokenizer(self.cfg["model"])
                dtype = self.acfg.get("dtype") or self.cfg["model"].get("dtype", "auto")
                model = load_model(self.cfg["model"], device, pick_dtype(dtype, device))
            self._process(todo, writer, model, tokenizer, rank)
        summary = {"part": writer.part, "rows_in_shard": len(mine), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
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
        if scored is not None:
            print(f"attribute: part {writer.part}: {scored} scored, {summary.get('rejected')} rejected of {rows} rows "
                  f"-> {writer.layout.dir}", flush=True)
        if rows and scored == 0:
            raise NothingScored(f"every one of the {rows} rows of part {writer.part} was rejected: see the reasons "
                                f"in {writer.final('rejects')} (e.g. attribute.max_tokens, data.fields)")
        return summary

    def _prepare(self, todo: list[Sample | Reject], tokenizer: Any, model_limit: int = 0) -> tuple[list[tuple[Sample, Any]], list[dict]]:
        """Tokenize every sample once; too long or unmappable ones become rejects."""
        a = self.acfg
        pattern = resolve_pattern(a.get("segment_preset", "default"), a.get("segment_pattern"))
        suffix = a.get("answer_suffix") or ANSWER_SUFFIX_DEFAULT
        max_tokens = int(a.get("max_tokens", 0) or 0)
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
        from segsft.models import pad_token_id

        a = self.acfg
        model_name = str(self.cfg["model"]["name_or_path"])
        check_supports_logits_to_keep(model)
        model.eval()
        freeze(model)
        device = model.get_input_embeddings().weight.device
        budget = resolve_budget(a.get("max_batch_tokens", "auto"), device)
        adaptive = adaptive_settings(a) if a["rule"] == "adaptive" else None
        unconverged: list[str] = []
        pad = pad_token_id(tokenizer)
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        ready, rejects = self._prepare(todo, tokenizer, limit)
        buf = _Buffer(rejects=rejects)
        flush_every = max(1, int(a.get("flush_every", 8)))
        flush_seconds = float(a.get("flush_seconds", 300))
        last_flush = started = time.monotonic()
        tokens_done = 0
        bar = tqdm(total=len(todo), initial=len(rejects), desc=f"attribute rank {rank}", unit="sample", disable=rank != 0)
        for item, seq in ready:
            t0 = time.monotonic()
            n_fed = int(seq.answer_positions[-1]) + 1
            try:
                res = attribute_sequence(
                    model, torch.as_tensor(seq.input_ids[:n_fed], device=device),
                    torch.as_tensor(seq.answer_positions, device=device),
                    rule=a["rule"], steps=int(a["steps"]), baseline=a.get("baseline", "pad"), pad_id=pad,
                    batch_alphas=int(a.get("batch_alphas", 8)), max_batch_tokens=budget,
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
                self._rows(buf, item, seq, res, n_fed, model_name, time.monotonic() - t0)
                tokens_done += n_fed
                if res.converged is False:
                    unconverged.append(item.sample_id)
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens_done / max(time.monotonic() - started, 1e-9):.0f}")
            if len(buf) >= flush_every or time.monotonic() - last_flush > flush_seconds:
                writer.flush(buf)
                last_flush = time.monotonic()
        writer.flush(buf)
        bar.close()
        if unconverged:
            log.warning(
                "rank %d: %d sample(s) did not converge within attribute.max_steps=%d (gap <= %s and decision "
                "stability >= %s): %s. select.unconverged=keep|full|drop decides what selection does with them; "
                "raise attribute.max_steps to refine them further", rank, len(unconverged), adaptive.max_steps,
                adaptive.target_gap, adaptive.target_stability, ", ".join(unconverged))

    def _select_config(self) -> Any:
        from segsft.selection_config import SelectConfig

        return SelectConfig.from_cfg(self.cfg["select"]) if self.cfg.get("select") else SelectConfig()

    def _decide(self, seq: Any) -> Any:
        """The stop test's decision: the select rule with the configured select settings."""
        return segment_decider(seq.segment_tokens, self._select_config(), seq.train_tokens)

    def _rows(self, buf: _Buffer, item: Sample, seq: Any, res: Any, n_fed: int, model_name: str, seconds: float) -> None:
        a = res.token_attr
        for k, (m, (cs, ce), (ts, te)) in enumerate(zip(segment_metrics(a, seq.segment_tokens), seq.segment_chars, seq.segment_tokens)):
            buf.segments.append({"sample_id": item.sample_id, "segment": k, "char_start": cs, "char_end": ce,
                                 "token_start": ts, "token_end": te, **m})
        if not np.isfinite(a).all():
            log.warning("sample %s: non-finite attributions (model dtype too narrow?)", item.sample_id)
        buf.samples.append({
            "sample_id": item.sample_id,
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
            "steps": res.steps_used if self.acfg["rule"] != "adaptive" else int(adaptive_settings(self.acfg).max_steps),
            "model": model_name,
            "seconds": seconds,
            "steps_used": res.steps_used,
            "decision_stability": res.decision_stability,
            "converged": res.converged,
        })
