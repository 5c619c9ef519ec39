"""Rank and world size: the shard keys (`shard.index` of `shard.count`: one job per shard, e.g. a
Slurm array) where set, else torchrun's (or any launcher's) RANK/WORLD_SIZE."""

from __future__ import annotations

import os
from typing import Any, Sequence, TypeVar

from segsft.errors import PipelineError

T = TypeVar("T")


def rank_and_world(shard: Any = None) -> tuple[int, int]:
    """(rank, world) of this process: (shard.index, shard.count) when `shard` (the config's
    `shard` node) is set, else the launcher's (RANK, WORLD_SIZE); (0, 1) without either. Shard i
    of n is rank i of world n: the same part, the same rows. Bad values are one line each."""
    rank, world = _launcher_rank_and_world()
    if not is_sharded(shard):
        return rank, world
    problem = shard_problem(shard.index, shard.count)
    if problem:
        raise PipelineError(problem)
    if world > 1:
        # Two splits of one corpus would overlap: each rank would take rows of every shard.
        raise PipelineError(f"shard.index/shard.count are set under a launcher with WORLD_SIZE={world}: use one "
                            "split, either one job per shard (shard.index, shard.count; one process each) or "
                            "torchrun's ranks (drop the shard.* keys)")
    return int(shard.index), int(shard.count)


def is_sharded(shard: Any) -> bool:
    """Whether the shard keys are set (`shard.index` given or `shard.count` other than 1)."""
    return shard is not None and (shard.get("index") is not None or shard.get("count", 1) != 1)


def shard_problem(index: Any, count: Any) -> str | None:
    """One line when (shard.index, shard.count) is not a shard of the split; else None."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return f"shard.count={count!r}: use an integer >= 1, the number of shards (one job each)"
    if index is None:
        if count == 1:
            return None
        return (f"shard.count={count} without shard.index: give every job its shard, e.g. "
                f"-m shard.index='range(0,{count})' shard.count={count}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        return (f"shard.index={index!r} is outside shard.count={count} (shards are 0..{count - 1}): use "
                f"-m shard.index='range(0,{count})' shard.count={count}, or raise shard.count")
    return None


def _launcher_rank_and_world() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) of the launcher; (0, 1) without one."""
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
