"""Rank and world size as torchrun (or any launcher setting RANK/WORLD_SIZE) gives them."""

from __future__ import annotations

import os
from typing import Sequence, TypeVar

from segsft.errors import PipelineError

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of the launcher; (0, 1) without one. Bad values are one line each."""
    raw = {k: os.environ.get(k, d) for k, d in (("RANK", "0"), ("WORLD_SIZE", "1"))}
    try:
        rank, world = int(raw["RANK"]), int(raw["WORLD_SIZE"])
    except ValueError:
        raise PipelineError(f"RANK={raw['RANK']!r} WORLD_SIZE={raw['WORLD_SIZE']!r} are not integers: unset them, "
                            "or launch with torchrun, which sets both") from None
    if not 0 <= rank < world:
        raise PipelineError(f"RANK={rank} is outside WORLD_SIZE={world} (ranks are 0..{world - 1}): unset RANK and "
                            "WORLD_SIZE, or launch with torchrun, which sets both")
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
