"""Training examples of docs/method.md step 8: prompt + trace tokens, labels from the masks.

Every corpus row ends up either as an example or in `DataReport.dropped` with its reason.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from segsft.store.corpus import Reject, Sample
from segsft.finetune.labels import label_tokens, n_learned, truncate
from segsft.finetune.masks import SampleMask
from segsft.finetune.modes import MODES
from segsft.store.io import write_parquet
from segsft.schemas import TRAIN_TOKENS_SCHEMA
from segsft.method.text import build_sequence

log = logging.getLogger(__name__)




@dataclass(frozen=True)
class Example:
    sample_id: str
    input_ids: np.ndarray  # int32
    labels: np.ndarray  # int32, IGNORE_INDEX where no loss


@dataclass
class DataReport:
    """Where every corpus row went, and how many tokens carry loss."""

    mode: str
    corpus_rows: int = 0
    kept: int = 0
    truncated: int = 0
    tokens: int = 0
    learned_tokens: int = 0
    dropped: list[dict[str, str]] = field(default_factory=list)
    masks_not_in_corpus: int = 0

    def drop(self, sample_id: str, kind: str, detail: str) -> None:
        self.dropped.append({"sample_id": sample_id, "kind": kind, "reason": detail})

    def counts(self) -> dict[str, int]:
        return dict(Counter(d["kind"] for d in self.dropped))

    def summary(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "corpus_rows": self.corpus_rows,
            "kept": self.kept,
            "dropped": self.counts(),
            "truncated": self.truncated,
            "tokens": self.tokens,
            "learned_tokens": self.learned_tokens,
            "learned_share": self.learned_tokens / self.tokens if self.tokens else 0.0,
            "masks_not_in_corpus": self.masks_not_in_corpus,
        }


def step8_sequence(tokenizer: Any, question: str, solution: str) -> tuple[np.ndarray, int, np.ndarray]:
    """(input_ids, n_prompt, first character of each trace token): docs/method.md step 8, which is
    `build_sequence` without an answer suffix (the labels come from the masks' spans)."""
    seq = build_sequence(tokenizer, question, solution, None)
    return seq.input_ids, seq.n_prompt, seq.body_starts


def build_example(
    tokenizer: Any,
    sample: Sample,
    train_spans: Sequence[tuple[int, int]],
    max_length: int,
) -> tuple[Example, bool]:
    """The example of one sample and whether truncation cut it."""
    ids, n_prompt, starts = step8_sequence(tokenizer, sample.question, sample.solution)
    labels = label_tokens(ids, n_prompt, starts, train_spans)
    cut_ids, cut_labels = truncate(ids, labels, max_length)
    ex = Example(sample.sample_id, cut_ids.astype(np.int32), cut_labels.astype(np.int32))
    return ex, len(cut_ids) < len(ids)


def build_examples(
    tokenizer: Any,
    samples: Iterable[Sample],
    rejects: Iterable[Reject],
    mode: str,
    masks: Mapping[str, SampleMask] | None,
    max_length: int,
) -> tuple[list[Example], DataReport]:
    """Examples for `mode` (`selected`: learned spans from `masks`; `full`: the whole trace, of
    the samples `masks` covers when given (finetune.full_scope=selection), else of every sample)."""
    if mode not in MODES:
        raise ValueError(f"finetune.mode={mode!r}: use one of {list(MODES)}")
    if mode == "selected" and masks is None:
        raise ValueError("finetune.mode=selected needs the masks table")
    report = DataReport(mode=mode)
    for r in rejects:
        report.corpus_rows += 1
        report.drop(r.sample_id, "corpus_reject", r.reason)
    examples: list[Example] = []
    seen: set[str] = set()
    for s in samples:
        report.corpus_rows += 1
        seen.add(s.sample_id)
        if mode == "full":
            if masks is not None and s.sample_id not in masks:
                report.drop(s.sample_id, "not_in_selection", "finetune.full_scope=selection: the selection does "
                            "not cover it (attribution rejected it or selection dropped it)")
                continue
            spans = [(0, len(s.solution))]
        else:
            m = masks.get(s.sample_id) if masks is not None else None
            if m is None:
                report.drop(s.sample_id, "not_in_masks", "no rows in the masks table (selection did not cover it)")
                continue
            why = m.mismatch(len(s.solution))
            if why:
                report.drop(s.sample_id, "mask_mismatch", why)
                continue
            spans = m.train_spans()
        ex, cut = build_example(tokenizer, s, spans, max_length)
        learned = n_learned(ex.labels)
        if learned == 0:
            reason = "no trainable token" + (f" within finetune.max_length={max_length}" if cut else "")
            report.drop(s.sample_id, "no_trainable_tokens", reason)
            continue
        report.kept += 1
        report.truncated += int(cut)
        report.tokens += len(ex.input_ids)
        report.learned_tokens += learned
        examples.append(ex)
    if masks is not None:
        report.masks_not_in_corpus = len(set(masks) - seen)
    return examples, report


def log_report(report: DataReport) -> None:
    s = report.summary()
    log.info(
        "finetune data (%s): %d corpus rows -> %d examples; dropped %s; %d truncated at max_length; "
        "%d tokens, %d carry loss (%.1f%%)",
        s["mode"], s["corpus_rows"], s["kept"], s["dropped"] or "none", s["truncated"],
        s["tokens"], s["learned_tokens"], 100 * s["learned_share"],
    )
    if s["dropped"].get("not_in_masks"):
        log.warning(
            "%d corpus samples have no rows in the masks table and are not trained "
            "(attribution rejected them or selection ran on another corpus)", s["dropped"]["not_in_masks"]
        )
    if report.masks_not_in_corpus:
        log.warning("%d samples of the masks table are not in the corpus (data.path differs from selection's?)",
                    report.masks_not_in_corpus)


def write_train_tokens(path: str | Path, examples: Sequence[Example]) -> None:
    """`train_tokens.parquet`: exactly the ids and labels the trainer sees."""
    table = pa.table(
        {
            "sample_id": pa.array([e.sample_id for e in examples], pa.string()),
            "input_ids": pa.array([e.input_ids for e in examples], pa.list_(pa.int32())),
            "labels": pa.array([e.labels for e in examples], pa.list_(pa.int32())),
        },
        schema=TRAIN_TOKENS_SCHEMA,
    )
    write_parquet(path, table, TRAIN_TOKENS_SCHEMA)
