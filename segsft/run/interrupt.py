"""Ctrl-C ends every command in one line and exit 130: each stage keeps what it finished
(atomic files, markers written last), so the same command resumes."""

from __future__ import annotations

import os
import sys
from types import TracebackType

#: What Ctrl-C prints.
INTERRUPTED = "interrupted: rerun the same command to resume"


def on_interrupt_while_importing(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook for a Ctrl-C before the command's own handler is in place (while the heavy
    imports load): the same one line."""
    if issubclass(kind, KeyboardInterrupt):
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        os._exit(130)
    sys.__excepthook__(kind, value, tb)
