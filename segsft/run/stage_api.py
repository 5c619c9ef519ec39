"""The one interface of every stage: `check(s)`, `run(s, rank, world)`, `outputs(s)`.

As datatrove's `PipelineStep.run(data, rank, world_size)` and torchtune's recipes: each stage
package exposes `STAGE`, an object with these three methods, and gets the typed Settings
(segsft.config_schema), built once by dispatch: never the raw config.
`check` lists every problem at once and runs once, before anything runs; `run` does not
check again; `outputs` names what the stage writes (through segsft.store.layout).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from segsft.config_schema import Settings

#: The stages in pipeline order (stage=all runs them so).
ORDER = ("attribute", "select", "finetune", "evaluate", "report")
#: Stages run on their own (not part of stage=all).
EXTRA = ("compare", "generate", "export")


class Stage(Protocol):
    name: str
    #: Only rank 0 runs it (the dispatcher skips it on other ranks); a stage without it runs on every rank.
    rank0_only: bool
    #: Each rank does its share alone (no process group), so one job per shard (shard.index of
    #: shard.count, e.g. a Slurm array task) can run it; a stage without it refuses the shard keys.
    sharded: bool

    def check(self, s: Settings) -> list[str]: ...

    def run(self, s: Settings, rank: int, world: int) -> Any: ...

    def outputs(self, s: Settings) -> dict[str, Path]: ...


@dataclass(frozen=True)
class FunctionStage:
    """A Stage made of three functions of the settings (what most stages are)."""

    name: str
    check_fn: Callable[[Settings], list[str]]
    run_fn: Callable[[Settings, int, int], Any]
    outputs_fn: Callable[[Settings], dict[str, Path]]
    rank0_only: bool = False
    sharded: bool = False

    def check(self, s: Settings) -> list[str]:
        return self.check_fn(s)

    def run(self, s: Settings, rank: int, world: int) -> Any:
        return self.run_fn(s, rank, world)

    def outputs(self, s: Settings) -> dict[str, Path]:
        return self.outputs_fn(s)


def load(name: str) -> Stage:
    """The STAGE of `segsft.<name>`, imported only when asked for (heavy imports stay lazy)."""
    if name not in ORDER + EXTRA:
        raise ValueError(f"no stage {name!r}: use one of {list(ORDER + EXTRA)}")
    return importlib.import_module(f"segsft.{name}").STAGE
