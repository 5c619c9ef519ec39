"""What stored output depends on, stored once and compared on every rerun: the one
"stored settings differ -> refuse" check of attribution, generation and fine-tuning.

A rerun that resumes or reuses `run_dir/attribution` with another model, rule, baseline,
pattern, suffix, corpus or dtype would mix two kinds of scores in one table (or say "nothing
to do" over scores of other settings). The fingerprint names every such setting; a mismatch
is refused in one line naming the keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

from segsft.config_schema import ADAPTIVE_KEYS  # a fixed rule depends on `steps` instead
from segsft.errors import PipelineError
from segsft.store.corpus import corpus_identity
from segsft.store.hub import is_dataset
from segsft.store.io import file_sha256, write_json

if TYPE_CHECKING:
    from segsft.config_schema import Settings
    from segsft.store.layout import AttributionLayout

log = logging.getLogger(__name__)

#: The stop test's definition: a run made under another one is refused, not mixed ("bound+margins"
#: moved each segment towards the flip without rank swaps, on errors of the strengths themselves).
STOP_TEST = "bound+box-margins-on-shares"


class SettingsChanged(PipelineError):
    """The run dir holds attribution made with other settings."""


#: Adaptive keys newer than the others, with the value that runs made before them had: their stored
#: fingerprints lack the keys, and a refusal names that value rather than None.
BEFORE_KEYS = {"refine_on": "total", "margin": "adversarial"}


def fingerprint(cfg: "Settings", dtype: str, pattern: str) -> dict[str, Any]:
    """Every setting the scores (and the rows scored) depend on; `dtype` as the model ran in,
    `pattern` the resolved segment regex."""
    a, m, d = cfg.attribute, cfg.model, cfg.data
    fp: dict[str, Any] = {
        "model": str(m.name_or_path), "revision": m.revision, "dtype": dtype, "rule": a.rule,
        "baseline": a.baseline, "segment_pattern": pattern, "answer_suffix": a.answer_suffix,
        "max_tokens": int(a.max_tokens),
        "data_fields": {k: d.fields[k] for k in sorted(d.fields)}, "data_limit": d.limit,
    }
    # A file by its bytes; a dataset by its id, revision, split and `datasets` fingerprint (keys
    # that runs of a file never had, so their stored fingerprints still match).
    if is_dataset(d.path):
        fp["corpus_dataset"] = corpus_identity(d.path)
    else:
        fp["corpus_sha256"] = file_sha256(d.path)
    if d.adapter not in (None, "", "none"):
        fp["data_adapter"] = d.adapter
    if a.rule == "adaptive":
        fp.update({k: getattr(a, k) for k in ADAPTIVE_KEYS})
        fp["stop_test"] = STOP_TEST
    else:
        fp["steps"] = int(a.steps)
    return fp


def settings_diff(stored: Mapping[str, Any], now: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """`key: <stored> there, <now> now` for every key (all of both by default) whose value changed
    (a key of BEFORE_KEYS that a side lacks holds the value runs had before it)."""
    keys = sorted({*stored, *now}) if keys is None else list(keys)
    there = {k: stored.get(k, BEFORE_KEYS.get(k)) for k in keys}
    here = {k: now.get(k, BEFORE_KEYS.get(k)) for k in keys}
    return [f"{k}: {_short(there[k])} there, {_short(here[k])} now" for k in keys if there[k] != here[k]]


def read_record(path: Path) -> dict | None:
    """A settings record this pipeline wrote (a JSON object), or None when it is not one (damaged,
    cut short, or written by hand)."""
    import json

    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stored if isinstance(stored, dict) else None


def check_or_store(path: Path, fp: Mapping[str, Any], holds: str, remedy: str,
                   bound: Callable[[], bool] | None = None) -> None:
    """Store `fp` at `path` the first time; refuse (one line: the changed keys, then `remedy`)
    a rerun whose settings differ from the stored ones, whatever `path.parent` `holds`.

    `bound()` says whether `path.parent` holds anything made under the stored fingerprint yet
    (None: always); while it holds nothing, a rerun with other settings replaces the fingerprint."""
    import json

    if not path.is_file():
        write_json(path, dict(fp))
        return
    stored = read_record(path)
    if stored is None:
        if bound is not None and not bound():
            log.info("%s holds no %s yet: its unreadable settings fingerprint is replaced by this run's", path.parent, holds)
            write_json(path, dict(fp))
            return
        # What was made here was made with settings no one can now tell: mixing is refused.
        raise SettingsChanged(f"{path} is not a settings record this pipeline wrote (not a JSON object), and "
                              f"{path.parent} holds {holds} made under it: {remedy}")
    diff = settings_diff(stored, fp)
    if diff and bound is not None and not bound():
        # The fingerprint binds what was made under it, and nothing is yet (a run that failed
        # before scoring anything, e.g. on a wrong data.path): a corrected rerun takes the directory.
        log.info("%s holds no %s yet: its settings fingerprint is replaced by this run's (%s)",
                 path.parent, holds, "; ".join(diff))
        write_json(path, dict(fp))
        return
    if diff:
        raise SettingsChanged(f"{path.parent} holds {holds} made with other settings ({'; '.join(diff)}): {remedy}")


def holds_scores(layout: AttributionLayout) -> bool:
    """Anything scored or rejected under `layout`: a part file, a marker or a committed chunk."""
    return (bool(layout.markers()) or any(layout.table_files().values())
            or any(layout.chunks(p) for p in layout.partial_parts()))


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:18] + "..." + s[-18:]
