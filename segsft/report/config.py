"""The checks of the `report.*` settings (typed: segsft.config_schema.ReportConf)."""

from __future__ import annotations

import importlib.util
import numbers
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segsft.config_schema import Settings

from segsft.errors import PipelineError
from segsft.store.layout import RunLayout
from segsft.config_schema import empty_dir_problem


class ReportError(PipelineError):
    """The report cannot be made from what the run directory holds; the message says what to run."""


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def check_config(cfg: "Settings") -> list[str]:
    """Every problem of the report settings, each saying what to change."""
    r, errs = cfg.report, []
    path = r.path
    if not path or not str(path).endswith((".html", ".htm")):
        errs.append(f"report.path={path!r}: give the HTML file to write, e.g. report.path={RunLayout('runs/x').report}")
    sel = r.selection
    if sel is not None and not isinstance(sel, str):
        errs.append(f"report.selection={sel!r}: give one selection directory (e.g. runs/x/selection/<name>) "
                    "or null for every directory under run_dir/selection")
    mt = r.max_traces
    if mt is not None and (not _is_int(mt) or mt < 0):
        errs.append(f"report.max_traces={mt!r}: use an integer >= 0 (0 = overview only) or null for every trace")
    ts = r.token_shading
    if not isinstance(ts, bool):
        errs.append(f"report.token_shading={ts!r}: use true or false")
    errs += [p for p in (empty_dir_problem("run_dir", cfg.run_dir),) if p]
    if not cfg.data.path:
        errs.append("data.path is empty: point it to the corpus the run was attributed on (the report shows its text)")
    if ts is True and not cfg.model.name_or_path:
        errs.append("model.name_or_path is empty: set it to the run's model (its tokenizer places the tokens) "
                    "or pass report.token_shading=false")
    from segsft.method.text import resolve_pattern

    try:
        resolve_pattern(cfg.attribute.segment_preset, cfg.attribute.segment_pattern)
    except Exception as e:  # re.error or the preset's ValueError: both are the user's to fix
        errs.append(f"attribute.segment_preset/segment_pattern: {e} (the report highlights the keywords with it)")
    if importlib.util.find_spec("matplotlib") is None:
        errs.append("matplotlib is not installed: the report draws its figures with it; run "
                    "`.venv/bin/python -m pip install 'matplotlib>=3.7'`")
    return errs
