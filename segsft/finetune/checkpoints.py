"""Checkpoints that are known to be whole, and picking one to resume from.

The Trainer writes a checkpoint in several steps (weights, optimizer shards of every
rank, RNG states, trainer state). A kill in between leaves a directory that looks like
a checkpoint but cannot be resumed. `COMPLETE` is written only after every rank has
finished its part, and only checkpoints holding it are resumed from.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback

from segsft.run.dist import barrier, is_main
from segsft.store.io import write_text

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
_CKPT = re.compile(r"^checkpoint-(\d+)$")



class CompleteMarker(TrainerCallback):
    """Writes `<checkpoint>/COMPLETE` once every rank has saved its share of it."""

    def on_save(self, args, state, control, **kwargs):
        # The Trainer calls on_save on every rank right after its own part of the save.
        barrier()
        if is_main():
            ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if ckpt.is_dir():
                write_text(ckpt / MARKER, json.dumps({"global_step": state.global_step, "time": time.time()}) + "\n")
        barrier()
        return control


class StepCounter(TrainerCallback):
    """Counts the optimizer steps this process ran (a resumed run runs fewer)."""

    def __init__(self) -> None:
        self.first_step: int | None = None
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1
        if self.first_step is None:
            self.first_step = state.global_step
        return control


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path, bool]]:
    """(step, directory, complete) of every `checkpoint-N` under `output_dir`, by step."""
    out = []
    d = Path(output_dir)
    if d.is_dir():
        for p in d.iterdir():
            m = _CKPT.match(p.name)
            if m and p.is_dir():
                out.append((int(m.group(1)), p, (p / MARKER).is_file()))
    return sorted(out)


def latest_complete(output_dir: str | Path) -> Path | None:
    """The newest checkpoint that holds the COMPLETE marker, or None."""
    done = [p for _, p, ok in checkpoints(output_dir) if ok]
    return done[-1] if done else None


def remove_incomplete(output_dir: str | Path) -> list[Path]:
    """Delete checkpoints without the marker (left by a kill mid-save); main process only."""
    gone = []
    for _, p, ok in checkpoints(output_dir):
        if not ok:
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    if gone:
        log.warning("removed incomplete checkpoints (no %s marker): %s", MARKER, [p.name for p in gone])
    return gone
