"""Checks of the keys that name places, made once before any stage runs.

- Directory keys (`run_dir`, `selection_dir`, ...): a key naming an existing file (or a path
  under one) would end in FileExistsError / NotADirectoryError deep in a stage.
- Name keys (`select.name`): a name becomes one directory under its parent; a separator or `..`
  would write outside it, where report and compare never look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from segsft.config_schema import empty_dir_problem

#: Every key of conf/config.yaml that names a directory a stage writes or reads.
DIR_KEYS = ("run_dir", "selection_dir", "finetune_dir", "eval_dir", "generate_dir", "export.dir")
#: Directory keys that must name one (export.dir is null when there is nothing to export).
REQUIRED_DIR_KEYS = tuple(k for k in DIR_KEYS if k != "export.dir")
#: Keys that name a file a stage writes: no directory on its way may be a file.
FILE_KEYS = ("report.path",)
#: Keys whose value is one directory name under a parent the pipeline chooses.
NAME_KEYS = ("select.name",)


def _value(s: Any, key: str) -> Any:
    """`key` (dotted) of the typed settings; None where a part is missing."""
    for part in key.split("."):
        s = getattr(s, part, None)
    return s


def dir_key_problem(key: str, value: Any, shown: Any = None) -> str | None:
    """One line when `value` (a directory key's, or the directory of a file key's value `shown`)
    is a file, or lies under one; else None."""
    if not value:
        return None
    p = Path(str(value))
    said = f"{key}={value if shown is None else shown}"
    if p.is_file():
        where = f"{said} is" if shown is None else f"{said}: {p} is"
        return f"{where} a file, not a directory: point {key} elsewhere (or move the file)"
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{said}: {parent} is a file, not a directory: point {key} elsewhere"
            break
    return None


def name_key_problem(key: str, value: Any) -> str | None:
    """One line when a name key's value is not a single plain directory name; else None."""
    if value is None:
        return None
    name = str(value)
    if not name.strip():
        return f"{key} is empty: give a directory name (e.g. {key}=my-selection)"
    if "/" in name or "\\" in name or name in (".", "..") or ".." in Path(name).parts or "\x00" in name:
        return (f"{key}={name!r}: a name is one directory name, without path separators or '..': "
                f"use a plain name (e.g. {key}=my-selection), or set the directory itself (selection_dir=...)")
    return None


def _blocking_file(value: Any) -> Path | None:
    p = Path(str(value))
    return next((q for q in (p, *p.parents) if q.exists() and not q.is_dir()), None) if value else None


def path_key_problems(cfg: Any) -> list[str]:
    """Every problem of the directory and name keys of `cfg`, each one line. One file in the way
    is named once, by the first key it blocks (run_dir before the directories made from it)."""
    errs, blocked = [], set()
    for k in DIR_KEYS:
        v = _value(cfg, k)
        empty = empty_dir_problem(k, v) if k in REQUIRED_DIR_KEYS else None
        if empty:
            # Checked before Hydra makes its log directory: it would land in the working directory.
            errs.append(empty)
            continue
        why = dir_key_problem(k, v)
        if why and _blocking_file(v) not in blocked:
            blocked.add(_blocking_file(v))
            errs.append(why)
    for k in FILE_KEYS:
        v = _value(cfg, k)
        parent = Path(str(v)).parent if v else None
        why = dir_key_problem(k, parent, shown=v) if parent else None
        if why and _blocking_file(parent) not in blocked:
            blocked.add(_blocking_file(parent))
            errs.append(why)
    errs += [e for e in (name_key_problem(k, _value(cfg, k)) for k in NAME_KEYS) if e]
    return errs
