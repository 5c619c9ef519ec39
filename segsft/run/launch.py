"""The launcher's environment where the stage is started without one: DeepSpeed as a
one-process torchrun, DeepSpeed's process group on CPU ranks."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def single_process_env() -> None:
    """DeepSpeed without a launcher (plain `python pipeline.py`) would look for MPI; give
    it the environment of a one-process torchrun instead."""
    if "RANK" in os.environ:
        return
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"),
                      MASTER_PORT=os.environ.get("MASTER_PORT", str(port)))
    log.info("DeepSpeed without a launcher: running as a single process (RANK=0, WORLD_SIZE=1)")


def start_cpu_deepspeed_group() -> None:
    """DeepSpeed on CPU ranks (tests, CPU clusters): accelerate starts DeepSpeed's process
    group only for accelerator backends and would otherwise treat each CPU rank as a world
    of one. Start it with gloo here; TrainingArguments then reuses this state."""
    from accelerate import PartialState

    os.environ["ACCELERATE_USE_DEEPSPEED"] = "true"
    try:
        PartialState(backend="gloo")
    finally:
        del os.environ["ACCELERATE_USE_DEEPSPEED"]
