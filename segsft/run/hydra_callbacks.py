"""Hydra callbacks of segsft/conf/config.yaml.

`StorageCheck`: Hydra creates its log directory under run_dir before the pipeline runs; on a
read-only or full disk, or with a directory key naming a file, that would end in Hydra's
traceback. Check the directory keys and probe the disk first, and say so in one line.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from segsft.errors import storage_error


def _probe(directory: str) -> None:
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".probe-")
        try:
            os.write(fd, b"x" * 4096)  # a full disk refuses a block, not always an empty file
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as e:
        e.filename = e.filename or directory
        msg = storage_error(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def _check_path_keys(config: Any) -> None:
    from segsft.run.path_keys import path_key_problems

    try:
        errs = path_key_problems(config)
    except Exception:  # noqa: BLE001 - an unresolvable key is the stages' checks' to report
        return
    if errs:
        for e in errs:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


class StorageCheck(Callback):
    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        _check_path_keys(config)
        _probe(str(config.hydra.run.dir))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        _check_path_keys(config)
        _probe(str(config.hydra.sweep.dir))
