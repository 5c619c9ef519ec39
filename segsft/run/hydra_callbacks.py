"""Hydra callbacks of segsft/conf/config.yaml.

`StorageCheck`: Hydra creates its log directory under run_dir before the pipeline runs; on a
read-only or full disk, or with a directory key naming a file, that would end in Hydra's
traceback. Check the directory keys and probe the disk first, and say so in one line.

`ShardCheck`: a multirun of shards (`-m shard.index='range(0,64)' shard.count=64`) checks every
job's shard before the launcher submits any: a job refused on a Slurm node would be a traceback
in the submitting process, after the queue.
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


def _swept(config: Any, keys: tuple[str, ...]) -> dict[str, list[Any]]:
    """key -> the values a multirun gives it (the sweeper's params, then the command line's
    overrides, which replace them), for the keys of `keys` that it sets."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = config.hydra.get("sweeper", {}).get("params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    out: dict[str, list[Any]] = {}
    for o in OverridesParser.create().parse_overrides(args):
        if o.key_or_group in keys:
            out[o.key_or_group] = list(o.sweep_iterator()) if o.is_sweep_override() else [o.value()]
    return out


def shard_jobs_problem(config: Any) -> str | None:
    """The first problem of the shard keys over every job of a multirun (its sweep expanded); None
    when there is none, or when the sweep cannot be expanded here (each job then checks its own)."""
    import itertools
    import types

    from segsft.run.dist import shard_problem, shard_spelling
    from segsft.run.stages import shard_stage_problem

    try:
        swept = _swept(config, ("stage", "shard.index", "shard.count", "attribute.shard", "attribute.num_shards"))
    except Exception:  # noqa: BLE001 - an interval sweep or a grammar error: Hydra and the jobs report it
        return None
    stages = swept.get("stage", [config.stage])
    # shard.* take attribution's contract names' values unless set themselves (config_schema.ShardConf).
    ikey, ckey = shard_spelling(next((k for k in ("shard.index", "attribute.shard") if k in swept), None),
                                next((k for k in ("shard.count", "attribute.num_shards") if k in swept), None))
    indices = swept.get(ikey, [config.shard.index])
    counts = swept.get(ckey, [config.shard.count])
    for stage, index, count in itertools.product(stages, indices, counts):
        if not isinstance(index, (int, type(None))) or not isinstance(count, int):
            continue  # not an integer: the job's composition names it
        problem = (shard_problem(index, count, (ikey, ckey))
                   or shard_stage_problem(str(stage), types.SimpleNamespace(index=index, count=count), (ikey, ckey)))
        if problem:
            return problem
    return None


class ShardCheck(Callback):
    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        problem = shard_jobs_problem(config)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
