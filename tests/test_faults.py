"""Faults of the machine, not the code: a full disk and a read-only run dir are one line (exit 2),
and a rerun once there is room finishes the work."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import REPO
from segsft.errors import storage_error
from segsft.select.synthetic import random_tables, write_part


def test_a_failed_write_names_the_file_and_what_to_do(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from segsft.store.io import write_parquet

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "Error writing bytes to file")  # as pyarrow raises it: no file name

    monkeypatch.setattr(pq, "write_table", full)
    t = pa.table({"x": [1]})
    with pytest.raises(OSError) as e:
        write_parquet(tmp_path / "a.parquet", t, t.schema)
    msg = storage_error(e.value)
    assert msg.startswith(f"cannot write {tmp_path / 'a.parquet'}: the disk is full") and "rerun" in msg
    assert list(tmp_path.iterdir()) == []  # no temp file left behind
    assert storage_error(OSError(errno.EROFS, "x", "/r")).startswith("cannot write /r: the filesystem is read-only")
    assert storage_error(OSError(errno.ENOENT, "x", "/r")) is None  # not the machine's: a bug keeps its traceback
    assert storage_error(ValueError("x")) is None


@pytest.fixture
def small_disk():
    """A 3 MiB tmpfs (needs root and mount; skipped where the machine does not allow it)."""
    d = Path(f"/tmp/segsft-tmpfs-{uuid.uuid4().hex[:8]}")
    d.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True).returncode:
        d.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield d
    finally:
        subprocess.run(["umount", str(d)], capture_output=True)
        d.rmdir()


def _select(run_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pipeline.py", "stage=select", f"run_dir={run_dir}"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def test_full_disk_and_read_only_run_dir_are_one_line_and_a_rerun_finishes(small_disk):
    run_dir = small_disk / "run"
    seg, smp = random_tables(300, 8, seed=1)
    write_part(run_dir / "attribution", seg, smp)
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:  # fill the disk to the last block
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    out = _select(run_dir)  # Hydra's log directory cannot be made: one line before anything runs
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert out.stderr.strip().splitlines() == [f"error: cannot write {run_dir / 'logs' / 'select'}: the disk is full: "
                                               "free space there or point run_dir (or the path named) to a disk with "
                                               "room; then rerun the same command (finished work is kept)"]
    os.truncate(filler, os.path.getsize(filler) - 6 * 4096)  # room for the logs, not for the masks
    out = _select(run_dir)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "Logging error" not in out.stderr, out.stderr[-3000:]
    assert f"error: cannot write {run_dir / 'selection'}" in out.stderr and "the disk is full" in out.stderr
    filler.unlink()
    out = _select(run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(list((run_dir / "selection").glob("*/masks.parquet"))) == 1
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    out = subprocess.run([sys.executable, "pipeline.py", "stage=select", f"run_dir={run_dir}", "select.top_mass=0.5"],
                         cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    assert "the filesystem is read-only" in out.stderr


def _pipeline(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pipeline.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO), **env})


@pytest.mark.parametrize("where", ["run_dir", "attribution"])
def test_a_run_dir_that_is_a_file_is_one_line_naming_it(tmp_path, where):
    run_dir = tmp_path / "run"
    if where == "run_dir":
        run_dir.write_text("not a directory")
        blocking = run_dir
    else:  # the run dir exists, but the stage's own directory under it is a file
        write_part(run_dir / "attribution", *random_tables(4, 3, seed=1))
        blocking = run_dir / "selection"
        blocking.write_text("not a directory")
    out = _pipeline("stage=select", f"run_dir={run_dir}")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    line = next(x for x in out.stderr.splitlines() if x.startswith("error: "))
    # The directory keys are checked up front (segsft.run.path_keys): the line names the key and the file.
    key = "run_dir" if where == "run_dir" else "selection_dir"
    assert line.startswith(f"error: {key}=") and f"{blocking} is a file, not a directory: point {key} elsewhere" in line


@pytest.mark.parametrize("rank, world", [("2", "2"), ("-1", "1"), ("x", "1")])
def test_an_out_of_range_rank_is_one_line(tmp_path, rank, world):
    run_dir = tmp_path / "run"
    write_part(run_dir / "attribution", *random_tables(4, 3, seed=1))
    out = _pipeline("stage=select", f"run_dir={run_dir}", RANK=rank, WORLD_SIZE=world)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert len(errors) == 1 and f"RANK={rank if rank != 'x' else repr(rank)}" in errors[0] and "torchrun" in errors[0]
