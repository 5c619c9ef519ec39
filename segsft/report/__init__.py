"""The report stage: one self-contained HTML page of a run's attribution and selections.

`STAGE.run(settings, rank, world)` reads `run_dir/attribution/`, the selection directories and
the corpus, and writes `report.path`; `STAGE.check(settings)` lists every problem of `report.*`
at once. One job per module:
`load` reads what the stages wrote, `view` builds what the page shows, `pieces` cuts text,
`html` renders (CSS and JS ship in `assets/`), `plots` draws the figures.
"""

from pathlib import Path
from typing import Any

from segsft.config_schema import Settings
from segsft.report.config import ReportError, check_config
from segsft.report.stage import run as _run

__all__ = ["STAGE", "ReportError", "check_config"]


class _ReportStage:
    """segsft.run.stage_api.Stage for the HTML report (one page per run: rank 0 writes it)."""

    name = "report"
    rank0_only = True

    def check(self, s: Settings) -> list[str]:
        return check_config(s)

    def run(self, s: Settings, rank: int, world: int) -> Path | None:
        path = _run(s, checked=True)
        print(f"report: {path}", flush=True)
        return path

    def outputs(self, s: Settings) -> dict[str, Path]:
        return {"report": Path(str(s.report.path))}


STAGE = _ReportStage()
