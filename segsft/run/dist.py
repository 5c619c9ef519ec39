"""Rank and world size as torchrun (or any launcher setting RANK/WORLD_SIZE) gives them."""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def is_main() -> bool:
    """Rank 0 of the job (the launcher's RANK; 0 without a launcher)."""
    return rank_and_world()[0] == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The deterministic share of one rank: every world-th item from position rank."""
    return list(items[rank::world])


def barrier() -> None:
    """Wait for every rank when a process group is up; a no-op in one process."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
