"""Batching: right padding (labels padded with IGNORE_INDEX) or padding-free packing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from segsft.finetune.examples import Example
from segsft.finetune.labels import IGNORE_INDEX


class ExampleDataset(torch.utils.data.Dataset):
    """The examples as the dicts the HF Trainer feeds to a collator."""

    def __init__(self, examples: Sequence[Example]):
        self.examples = list(examples)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        e = self.examples[i]
        return {"input_ids": e.input_ids.tolist(), "labels": e.labels.tolist()}


@dataclass
class PaddingCollator:
    """Right-pads a batch: `pad_id` in the ids, IGNORE_INDEX in the labels, 0 in the mask.

    Right padding keeps every real token's position and causal context unchanged, so a
    sample's loss does not depend on what it is batched with.
    """

    pad_id: int

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.as_tensor(f["input_ids"])
            labels[i, :k] = torch.as_tensor(f["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def packing_collator() -> Any:
    """Padding-free packing: the batch becomes one row with position ids restarting per
    sample (flash-attention's varlen path keeps samples from attending to each other)."""
    from transformers import DataCollatorWithFlattening

    # separator_id: the first label of each packed sample is ignored, so no token is
    # trained to follow the previous sample's last token.
    return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX)
