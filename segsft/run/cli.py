"""The command: `segsft stage=attribute|select|... [overrides]` (also `python pipeline.py ...`).

The config comes from the package (segsft.store.shipped), so the command works from a wheel
installed anywhere, not only from a clone.
"""

from __future__ import annotations

import logging
import sys
import traceback
from typing import Callable

import hydra
from omegaconf import DictConfig

from segsft.store.shipped import conf_dir

_ENTERED = False
#: How a library error's commands are worded for the user (segsft.run.hints).
_HINTS: list[Callable[[str], str]] = []


@hydra.main(version_base="1.3", config_path=str(conf_dir()), config_name="config")
def main(cfg: DictConfig) -> None:
    global _ENTERED
    _ENTERED = True
    from segsft.errors import PipelineError, storage_error
    from segsft.run.hints import make_hints
    from segsft.run.stages import run_stage

    hints = _HINTS[0] if _HINTS else make_hints

    try:
        run_stage(cfg)
    except (PipelineError, OSError) as e:
        # The user's to fix (or the machine's: a full disk, a read-only directory): say what,
        # without a traceback. Any other OSError is a bug and keeps its traceback.
        msg = hints(str(e)) if isinstance(e, PipelineError) else storage_error(e)
        if msg is None:
            raise
        _to_log_files(logging.ERROR, msg)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def _to_log_files(level: int, msg: str) -> None:
    """Record `msg` in the run's log file but not on the console, where the caller prints it
    once on stderr (the console handler would show it a second time, on stdout)."""
    logger = logging.getLogger("segsft")
    record = logger.makeRecord(logger.name, level, __file__, 0, "%s", (msg,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


def console(hints: Callable[[str], str] | None = None) -> None:
    """Hydra's main with our exit codes (2 for the user's errors, 130 on Ctrl-C); `hints` words
    the errors' commands (default: make's)."""
    from segsft.run.dist import end_process_after_group, took_part_in_process_group
    from segsft.run.hydra_errors import install
    from segsft.run.interrupt import INTERRUPTED

    if hints is not None:
        _HINTS[:] = [hints]
    install(lambda: _ENTERED)  # Hydra's multi-line reports of config errors become our one line
    try:
        main()
    except KeyboardInterrupt:
        _to_log_files(logging.WARNING, INTERRUPTED)
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        end_process_after_group(130)
        sys.exit(130)
    except SystemExit as e:
        # Hydra exits 1 when the config does not compose (a value of the wrong type, an unknown
        # key: it names the key in its message). That is the user's to fix, like our checks: 2.
        if e.code == 1 and not _ENTERED:
            sys.exit(2)
        if took_part_in_process_group():
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr, flush=True)  # what `raise` would print
            end_process_after_group(e.code if isinstance(e.code, int) else (0 if e.code is None else 1))
        raise
    except Exception:
        # Hydra re-raises (HYDRA_FULL_ERROR=1, a debugger): the traceback, then exit 1.
        if took_part_in_process_group():
            traceback.print_exc()
            end_process_after_group(1)
        raise
    # A torchrun rank of stage=finetune ends here, past the teardown crash of gloo's threads.
    end_process_after_group(0)


def segsft() -> None:
    """The console script `segsft` ([project.scripts]): errors name `segsft ...` commands."""
    from segsft.run.hints import command_hints
    from segsft.run.interrupt import on_interrupt_while_importing

    sys.excepthook = on_interrupt_while_importing

    console(command_hints)
