"""Reading the select stage's masks table into trained character spans per sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from segsft.errors import PipelineError
from segsft.store.io import parquet_columns
from segsft.store.layout import SelectionLayout
from segsft.schemas import FINETUNE_MASKS_COLUMNS



class MasksError(PipelineError):
    """The masks table as a whole cannot be used."""


@dataclass(frozen=True)
class SampleMask:
    """The segments of one sample as selection saw them, in segment order."""

    spans: tuple[tuple[int, int], ...]  # character spans into the trace
    train: tuple[bool, ...]  # True = the segment is learned

    def train_spans(self) -> list[tuple[int, int]]:
        return [s for s, t in zip(self.spans, self.train) if t]

    def mismatch(self, trace_len: int) -> str | None:
        """Why these spans cannot belong to a trace of `trace_len` characters, or None.

        Selection's segments tile the trace exactly (docs/method.md step 2); anything else means
        the masks were made from other text, and their spans would label the wrong tokens.
        """
        pos = 0
        for a, b in self.spans:
            if a != pos or b <= a:
                return f"mask segments do not tile the trace (a segment spans [{a}, {b}) where {pos} was expected)"
            pos = b
        if pos != trace_len:
            return f"mask segments cover {pos} characters but the trace has {trace_len}: the masks come from another corpus"
        return None


def masks_path(selection_dir: str | Path) -> Path:
    return SelectionLayout(Path(selection_dir)).masks


def read_masks(selection_dir: str | Path) -> dict[str, SampleMask]:
    """`sample_id` -> its segments, from the masks table of `selection_dir`."""
    path = masks_path(selection_dir)
    if not path.is_file():
        raise MasksError(
            f"{path} does not exist: run the select stage first, set selection_dir to its "
            "output directory, or use finetune.mode=full"
        )
    unfinished = SelectionLayout(Path(selection_dir)).unfinished_problem()
    if unfinished:
        raise MasksError(unfinished)
    names = parquet_columns(path, SelectionLayout(Path(selection_dir)).redo)
    missing = [c for c in FINETUNE_MASKS_COLUMNS if c not in names]
    if missing:
        raise MasksError(f"{path} lacks columns {missing}: it is not a masks table of the select stage: "
                         "set selection_dir to the output directory of a select stage")
    df = pl.scan_parquet(path).select(FINETUNE_MASKS_COLUMNS).sort(["sample_id", "segment"]).collect()
    if df["train"].null_count():
        raise MasksError(f"{path}: column train has nulls; every segment must say train true/false")
    out: dict[str, SampleMask] = {}
    for (sid,), g in df.group_by(["sample_id"], maintain_order=True):
        out[str(sid)] = SampleMask(
            spans=tuple(zip(g["char_start"].to_list(), g["char_end"].to_list())),
            train=tuple(bool(t) for t in g["train"].to_list()),
        )
    return out
