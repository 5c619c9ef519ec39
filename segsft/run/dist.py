"""Rank and world size: the shard keys (`shard.index` of `shard.count`: one job per shard, e.g. a
Slurm array) where set, else torchrun's (or any launcher's) RANK/WORLD_SIZE; and the GPUs of a
rank's vLLM engine."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Sequence, TypeVar

from segsft.errors import PipelineError

T = TypeVar("T")

log = logging.getLogger(__name__)


def rank_and_world(shard: Any = None, names: tuple[str, str] = ("shard.index", "shard.count")) -> tuple[int, int]:
    """(rank, world) of this process: (shard.index, shard.count) when `shard` (the config's
    `shard` node) is set, else the launcher's (RANK, WORLD_SIZE); (0, 1) without either. Shard i
    of n is rank i of world n: the same part, the same rows. Bad values are one line each."""
    rank, world = _launcher_rank_and_world()
    if not is_sharded(shard):
        return rank, world
    problem = shard_problem(shard.index, shard.count, names)
    if problem:
        raise PipelineError(problem)
    if world > 1:
        # Two splits of one corpus would overlap: each rank would take rows of every shard.
        raise PipelineError(f"{names[0]}/{names[1]} are set under a launcher with WORLD_SIZE={world}: use one "
                            f"split, either one job per shard ({names[0]}, {names[1]}; one process each) or "
                            f"torchrun's ranks (drop {names[0]} and {names[1]})")
    return int(shard.index), int(shard.count)


def is_sharded(shard: Any) -> bool:
    """Whether the shard keys are set (`shard.index` given or `shard.count` other than 1)."""
    return shard is not None and (getattr(shard, "index", None) is not None or getattr(shard, "count", 1) != 1)


def shard_problem(index: Any, count: Any, names: tuple[str, str] = ("shard.index", "shard.count")) -> str | None:
    """One line when (shard.index, shard.count) is not a shard of the split; else None. `names`:
    the keys the user set them by (`shard_names`)."""
    i, n = names
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        return f"{n}={count!r}: use an integer >= 1, the number of shards (one job each)"
    if index is None:
        if count == 1:
            return None
        return (f"{n}={count} without {i}: give every job its shard, e.g. "
                f"-m {i}='range(0,{count})' {n}={count}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
        return (f"{i}={index!r} is outside {n}={count} (shards are 0..{count - 1}): use "
                f"-m {i}='range(0,{count})' {n}={count}, or raise {n}")
    return None


def shard_spelling(index_key: str | None, count_key: str | None) -> tuple[str, str]:
    """(index key, count key) to name in a shard message, given the keys the user set (None: not
    set): a key not set is named in the spelling of the one that is (attribute.shard with
    attribute.num_shards, shard.index with shard.count), so a message never mixes them."""
    index_key = index_key or ("attribute.shard" if count_key == "attribute.num_shards" else "shard.index")
    count_key = count_key or ("attribute.num_shards" if index_key == "attribute.shard" else "shard.count")
    return index_key, count_key


def shard_names(attribute: Any, shard: Any) -> tuple[str, str]:
    """The keys the shard was set by, one per key: attribution's contract names (attribute.shard,
    attribute.num_shards; shard.* take their values from them) where the user set those and
    shard.* still hold their values, else shard.index / shard.count (`shard_spelling`)."""
    index, count = getattr(attribute, "shard", None), getattr(attribute, "num_shards", 1)
    index_key = (("attribute.shard" if index == shard.index else "shard.index") if index is not None
                 else "shard.index" if shard.index is not None else None)
    count_key = (("attribute.num_shards" if count == shard.count else "shard.count") if count != 1
                 else "shard.count" if shard.count != 1 else None)
    return shard_spelling(index_key, count_key)


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
    """LOCAL_RANK of the launcher (this process's index on its node); 0 without one."""
    raw = os.environ.get("LOCAL_RANK", "0")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise PipelineError(f"LOCAL_RANK={raw!r} is not an integer >= 0: unset it, or launch with torchrun, which sets it")
    return value


def vllm_device_env(local_rank: int, visible: str | None, per_rank: int = 1, count: int | None = None) -> str:
    """The CUDA_VISIBLE_DEVICES of the vLLM engine of the process with this LOCAL_RANK: entries
    local_rank*per_rank .. +per_rank-1 of `visible` (the launcher's list, as Slurm or the user set
    it: indices, UUIDs or MIG ids, kept as written), or of 0..count-1 when `visible` is None
    (unset: every GPU of the node; `count` None = not known, not checked). `per_rank` is the
    engine's tensor_parallel_size. A rank past the list is one line naming LOCAL_RANK and it."""
    if per_rank < 1:
        raise PipelineError(f"tensor_parallel_size={per_rank}: use an integer >= 1")
    if visible is None:
        devices = [str(i) for i in range(count)] if count is not None else None
    else:
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    lo = local_rank * per_rank
    if devices is None:
        return ",".join(str(i) for i in range(lo, lo + per_rank))
    if lo + per_rank > len(devices):
        shown = "unset" if visible is None else repr(visible)
        raise PipelineError(
            f"LOCAL_RANK={local_rank} has no GPU{'s' if per_rank > 1 else ''} of its own: CUDA_VISIBLE_DEVICES={shown} "
            f"gives {len(devices)} GPU(s) on this node and each engine takes {per_rank} (tensor_parallel_size): start at "
            f"most {len(devices) // per_rank} process(es) per node (torchrun --nproc_per_node), or make more GPUs visible")
    return ",".join(devices[lo:lo + per_rank])


#: CUDA_VISIBLE_DEVICES as the launcher set it (None: unset), read before this process changes it.
_launcher_visible: list[str | None] = []


def launcher_visible_devices() -> str | None:
    """CUDA_VISIBLE_DEVICES as the launcher gave it to this process, even after
    pin_engine_devices narrowed it (a second engine, e.g. the next model, picks from the same list)."""
    if not _launcher_visible:
        _launcher_visible.append(os.environ.get("CUDA_VISIBLE_DEVICES"))
    return _launcher_visible[0]


def engine_in_this_process() -> bool:
    """vLLM told to run its engine in the calling process (V0, or V1 without multiprocessing)."""
    return os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING") == "0" or os.environ.get("VLLM_USE_V1") == "0"


def pin_engine_devices(per_rank: int = 1) -> str:
    """Give this rank's vLLM engine its own GPU(s): CUDA_VISIBLE_DEVICES becomes this
    LOCAL_RANK's share of the launcher's list (vllm_device_env), before the engine starts.

    Why CUDA_VISIBLE_DEVICES rather than vLLM's external_launcher: vLLM's one-process engine
    always takes "its" cuda:0 (8 ranks under torchrun would all land on GPU 0, each asking for
    gpu_memory_utilization of it), and it has no per-engine device option in every version;
    external_launcher instead makes the torchrun ranks one vLLM job, which wants the same
    prompts on every rank of a tensor-parallel group and data parallelism set up inside vLLM.
    A visible-device list is honoured by every vLLM version and keeps the ranks independent
    (rank r still takes problems r, r+world, ...).

    CUDA reads the variable once, when it initialises in a process. So:
    - nothing here initialises CUDA (torch's NVML-based device count only);
    - where torch already initialised CUDA in this process (stage=all: attribute and finetune
      ran before), the new value holds for new processes only. vLLM's V1 engine core is one:
      it is started with spawn (set here, and forced by vLLM too), so it sees this rank's GPUs.
      The memory cached by the earlier stages is released first, as vLLM would count it as
      taken. An engine in this very process (VLLM_ENABLE_V1_MULTIPROCESSING=0 or V0) would
      land on this process's first GPU: refused in one line unless that is this rank's.
    Returns the value set."""
    visible = launcher_visible_devices()
    count = None
    torch = sys.modules.get("torch")
    if visible is None:
        import torch

        n = torch.cuda.device_count()  # NVML where it can: does not initialise CUDA
        count = n if n > 0 else None
    lr = local_rank()
    chosen = vllm_device_env(lr, visible, per_rank, count)
    initialised = torch is not None and torch.cuda.is_initialized()
    if chosen != os.environ.get("CUDA_VISIBLE_DEVICES"):
        if initialised and engine_in_this_process() and lr * per_rank != 0:
            raise PipelineError(
                f"LOCAL_RANK={lr}: CUDA is already initialised in this process, on the GPUs it started with, and vLLM "
                "is set to run its engine in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0 or VLLM_USE_V1=0), so "
                "it would land on another rank's GPU: unset those variables, or run stage=evaluate / stage=generate "
                "in a process of its own")
        os.environ["CUDA_VISIBLE_DEVICES"] = chosen
        # A fresh engine process reads the new list whatever this one did with CUDA before.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    if initialised:
        import gc

        gc.collect()
        torch.cuda.empty_cache()
    log.info("vLLM engine of LOCAL_RANK=%d on CUDA_VISIBLE_DEVICES=%s (the launcher's: %s)", lr, chosen,
             "unset" if visible is None else visible)
    return chosen


def shard(items: Sequence[T], rank: int, world: int) -> list[T]:
    """The deterministic share of one rank: every world-th item from position rank."""
    return list(items[rank::world])


def barrier() -> None:
    """Wait for every rank when a process group is up; a no-op in one process."""
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


#: Whether this process has left a torch process group (leave_process_group).
_LEFT_GROUP = False


def leave_process_group() -> None:
    """Every rank leaves together (a rank still in a collective would otherwise abort), then the
    default group and its subgroups are destroyed; a no-op without a process group."""
    global _LEFT_GROUP
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
        _LEFT_GROUP = True


def took_part_in_process_group() -> bool:
    """Whether a torch process group is up in this process or was left by leave_process_group."""
    if _LEFT_GROUP:
        return True
    dist = sys.modules.get("torch.distributed")
    return dist is not None and dist.is_available() and dist.is_initialized()


def end_process_after_group(code: int) -> None:
    """End this process now with `code` when it took part in a torch process group (the finetune
    stage's, or any library's still up, e.g. a vLLM engine's); else return. Nothing after it runs.

    Why: destroy_process_group does not stop gloo's worker threads while DeepSpeed still holds the
    group (every ZeRO-3 parameter does), and a worker that frees a finished collective's tensors
    asks for the GIL. During the interpreter's own shutdown that request ends the thread from under
    a C++ destructor: "terminate called without an active exception", SIGABRT, after the model was
    written (pytorch/pytorch#190489). So what a normal exit does first happens here, while the
    interpreter is whole (other threads joined, exit handlers run, streams flushed), and the
    process ends without the interpreter's teardown (module finalizers do not run).
    """
    if not took_part_in_process_group():
        return
    import atexit
    import threading

    threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads, as a normal exit does
    atexit._run_exitfuncs()  # logging.shutdown and every library's handler, as a normal exit would
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
