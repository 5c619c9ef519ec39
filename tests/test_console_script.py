"""`segsft` works outside a clone: a wheel installed into a fresh virtual environment runs
`segsft stage=select` from a directory that is not the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

from conftest import REPO


def _sources(dest: Path) -> Path:
    """The tracked and untracked (not ignored) files: what a clone's checkout would hold."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    return dest


def test_segsft_runs_from_a_wheel_installed_outside_the_clone(tmp_path):
    src = _sources(tmp_path / "src")
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = dist.glob("segsft-*.whl")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    # The dependencies (torch, polars, hydra, ...) come from this test's environment, as a path
    # entry: its .pth files (the clone's editable install among them) are not processed.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    inst = subprocess.run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-3000:]

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(CUDA_VISIBLE_DEVICES="", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    # A small attribution run, written by the installed package's own synthetic tables.
    write = textwrap.dedent("""
        import json, segsft
        from segsft.select.synthetic import segment_rows, write_attribution
        rows = segment_rows("a", [4.0, 1.0, 0.5, 0.2], [0.1, 0.2, 0.9, 0.3]) + segment_rows("b", [2.0, 2.0], [0.5, 0.5])
        write_attribution("run", rows, world=2)
        print(json.dumps({"file": segsft.__file__}))
    """)
    made = subprocess.run([str(py), "-c", write], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr[-3000:]
    installed = Path(json.loads(made.stdout.splitlines()[-1])["file"])
    assert installed.is_relative_to(venv) and not installed.is_relative_to(REPO)

    proc = subprocess.run([str(venv / "bin" / "segsft"), "stage=select", "run_dir=run", "select.always_keep=[]",
                           "select.max_consistency=null"], cwd=work, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    masks = list((work / "run" / "selection").glob("*/masks.parquet"))
    assert len(masks) == 1
    import pyarrow.parquet as pq

    got = {(r["sample_id"], r["segment"]): r["train"] for r in pq.read_table(masks[0]).to_pylist()}
    # Independently: top_mass 0.7 of sample a's strength 5.7 is 3.99: the 4.0 segment alone
    # covers it; sample b's two equal segments: 2.0 < 2.8, so both.
    assert got == {("a", 0): True, ("a", 1): False, ("a", 2): False, ("a", 3): False, ("b", 0): True, ("b", 1): True}
    # The shipped benchmarks and config are package data of the wheel, not files of a clone.
    names = subprocess.run([str(py), "-c", "from segsft.evaluate.benchmarks import shipped; print(shipped())"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert "math500" in names and "aime24" in names

    bad = subprocess.run([str(venv / "bin" / "segsft"), "stage=select", "run_dir=nothing-here"], cwd=work, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    # Its hints name the command the user has here, not the clone's make targets.
    assert "`segsft stage=attribute" in bad.stderr and "make " not in bad.stderr, bad.stderr
