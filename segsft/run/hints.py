"""The CLI's wording of a library error: the command the user ran in place of pipeline commands.

Library errors name what to run as the pipeline command (`python pipeline.py stage=select
run_dir=runs/x`). pipeline.py, which `make` wraps, rewrites them as the make targets
(`make select RUN_DIR=runs/x`); the installed `segsft` command, used outside a clone, as
itself (`segsft stage=select run_dir=runs/x`)."""

from __future__ import annotations

import re

_SWEEP = re.compile(r"`python pipeline\.py --multirun stage=select run_dir=([^`\s]+) \+select/grid=default ([^`]+)`")
_STAGE = re.compile(r"`python pipeline\.py stage=(\w+) run_dir=([^`\s]+)`(?: under torchrun --nproc_per_node (\d+))?")


def make_hints(message: str) -> str:
    """`message` with each pipeline command it names as the make target that runs it."""
    message = _SWEEP.sub(lambda m: f'`make sweep RUN_DIR={m[1]} ARGS="{m[2]}"`', message)
    return _STAGE.sub(lambda m: f"`make {m[1]} RUN_DIR={m[2]}" + (f" NPROC={m[3]}`" if m[3] else "`"), message)


def command_hints(message: str) -> str:
    """`message` with each pipeline command it names as the installed `segsft` command."""
    return message.replace("`python pipeline.py ", "`segsft ")
