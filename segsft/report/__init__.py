"""The report stage: one self-contained HTML page of a run's attribution and selections.

`run(cfg)` reads `run_dir/attribution/`, the selection directories and the corpus, and writes
`report.path`; `check_config(cfg)` lists every problem of `report.*` at once.
"""

from segsft.report.config import ReportConfig, ReportError, check_config
from segsft.report.stage import run

__all__ = ["ReportConfig", "ReportError", "check_config", "run"]
