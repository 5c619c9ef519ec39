"""The report of a small real run, opened by headless Chromium: it renders, its DOM holds every
trace and segment, its script runs, and the console stays quiet.

Run: `.venv/bin/python -m pytest -m slow tests/test_report_browser.py` (needs Debian's chromium:
`apt-get install -y chromium`; skipped without /usr/bin/chromium).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from omegaconf import OmegaConf

from conftest import REPORT_SELECT, Page, compose_config, make_traces, write_jsonl
from segsft.attribute import AttributeStage
from segsft.report.stage import run as report_run
from segsft.select.stage import run as select_run

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"{CHROMIUM} is missing: `apt-get install -y chromium` to run the browser test"),
]

# A console line from the page (Chromium logs every console message and CSP violation like this).
CONSOLE = re.compile(r":CONSOLE[:(]|Uncaught")


def chromium(tmp: Path, page: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{len(list(tmp.glob('profile-*')))}"  # a fresh profile per launch: no lock, no state
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", *args, page.resolve().as_uri()]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if CONSOLE.search(line)]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_model_dir):
    """attribute (tiny model, 5 traces) -> select -> report."""
    root = tmp_path_factory.mktemp("browser")
    corpus = write_jsonl(root / "traces.jsonl", make_traces(5, seed=1))
    cfg = compose_config("stage=select", f'run_dir={root / "run"}', f"data.path={corpus}",
                         f"model.name_or_path={tiny_model_dir}", "attribute.steps=4", "attribute.batch_alphas=2",
                         "attribute.device=cpu", *REPORT_SELECT)
    AttributeStage(OmegaConf.to_container(cfg, resolve=True)).run(0, 1)
    select_run(cfg)
    return {"cfg": cfg, "path": report_run(cfg), "root": root}


def test_the_report_renders_with_every_trace_and_segment(small_run, tmp_path):
    run_dir = Path(small_run["cfg"].run_dir)
    n_samples = pl.read_parquet(run_dir / "attribution" / "samples-*.parquet").height
    n_segments = pl.read_parquet(run_dir / "attribution" / "segments-*.parquet").height
    assert n_samples == 5 and n_segments > n_samples

    shot = tmp_path / "report.png"
    p = chromium(tmp_path, small_run["path"], "--window-size=1280,2400", f"--screenshot={shot}")
    assert console_errors(p.stderr) == []
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1280)
    assert img.std() > 0.05  # not one flat colour
    assert (img.mean(axis=2) < 0.9).mean() > 0.02  # ink on a good part of the page
    shutil.copy(shot, small_run["root"] / "report.png")  # to look at by hand

    p = chromium(tmp_path, small_run["path"], "--dump-dom")
    assert console_errors(p.stderr) == []
    dom = Page(p.stdout)
    assert len(dom.traces) == n_samples
    assert len(dom.segments) == n_segments
    assert len(dom.pieces) > n_segments  # token pieces were rendered
    assert any(i.get("id") == "tok-toggle" for i in dom.inputs)
    assert re.search(r"<body(?![^>]*tokens)", p.stdout)  # tokens off until the box is ticked


def test_the_token_toggle_script_runs(small_run, tmp_path):
    # Ticked in the markup: the inline script applies it on load, so the body gets class "tokens".
    page = tmp_path / "ticked.html"
    page.write_text(small_run["path"].read_text().replace('id="tok-toggle"', 'id="tok-toggle" checked'))
    p = chromium(tmp_path, page, "--dump-dom")
    assert console_errors(p.stderr) == []
    assert re.search(r'<body class="tokens"', p.stdout)
    shot = tmp_path / "tokens.png"
    chromium(tmp_path, page, "--window-size=1280,2400", f"--screenshot={shot}")
    shutil.copy(shot, small_run["root"] / "tokens.png")
    import matplotlib.image

    assert not np.array_equal(matplotlib.image.imread(shot), matplotlib.image.imread(small_run["root"] / "report.png"))


def test_console_errors_are_seen(small_run, tmp_path):
    # The check above must be able to fail: a remote image (blocked by the page's policy) and a
    # script error both show up.
    page = tmp_path / "broken.html"
    page.write_text(small_run["path"].read_text().replace(
        "</body>", '<img src="https://example.invalid/x.png"><script>noSuchFunction();</script></body>'))
    errs = console_errors(chromium(tmp_path, page, "--dump-dom").stderr)
    assert any("Content Security Policy" in e for e in errs), errs
    assert any("Uncaught ReferenceError" in e for e in errs), errs
