"""What the scores of a run depend on, stored once per run dir and compared on every rerun.

A rerun that resumes or reuses `run_dir/attribution` with another model, rule, baseline,
pattern, suffix, corpus or dtype would mix two kinds of scores in one table (or say "nothing
to do" over scores of other settings). The fingerprint names every such setting; a mismatch
is refused in one line naming the keys.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from segsft.errors import PipelineError
from segsft.store.io import file_sha256, write_json
from segsft.store.layout import AttributionLayout

log = logging.getLogger(__name__)

#: Keys of the adaptive rule (they move the nodes); a fixed rule depends on `steps` instead.
ADAPTIVE_KEYS = ("target_gap", "target_stability", "max_steps", "init_points", "stable_ranks", "per_round")


class SettingsChanged(PipelineError):
    """The run dir holds attribution made with other settings."""


def fingerprint(cfg: Mapping[str, Any], dtype: str, pattern: str) -> dict[str, Any]:
    """Every setting the scores (and the rows scored) depend on; `dtype` as the model ran in,
    `pattern` the resolved segment regex."""
    a, m, d = cfg["attribute"], cfg["model"], cfg["data"]
    fp: dict[str, Any] = {
        "model": str(m["name_or_path"]), "revision": m.get("revision"), "dtype": dtype, "rule": a["rule"],
        "baseline": a["baseline"], "segment_pattern": pattern, "answer_suffix": a["answer_suffix"],
        "max_tokens": int(a["max_tokens"]), "corpus_sha256": file_sha256(d["path"]),
        "data_fields": {k: d["fields"][k] for k in sorted(d["fields"])}, "data_limit": d["limit"],
    }
    if a["rule"] == "adaptive":
        fp.update({k: a[k] for k in ADAPTIVE_KEYS})
    else:
        fp["steps"] = int(a["steps"])
    return fp


def check_or_store(layout: AttributionLayout, fp: Mapping[str, Any], run_dir: str | Path) -> None:
    """Store `fp` for a new run dir; refuse a rerun whose settings differ from the stored ones."""
    import json

    path = layout.fingerprint
    if not path.is_file():
        if layout.finished_parts() or layout.partial_parts():
            log.warning("%s holds attribution without a settings fingerprint (an older version made it): "
                        "taking this run's settings as its own", layout.dir)
        write_json(path, dict(fp))
        return
    stored = json.loads(path.read_text())
    diff = sorted(k for k in {*stored, *fp} if stored.get(k) != fp.get(k))
    if diff:
        what = "; ".join(f"{k}: {_short(stored.get(k))} there, {_short(fp.get(k))} now" for k in diff)
        raise SettingsChanged(
            f"{layout.dir} holds scores made with other settings ({what}): set a new run_dir=... to score with "
            f"these settings, or restore them to resume or reuse {run_dir}"
        )


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:18] + "..." + s[-18:]
