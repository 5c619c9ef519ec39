"""A process that took part in a torch process group (a torchrun rank of stage=finetune) ends
with its own exit code after its threads, exit handlers and log handlers are done, and without
the interpreter's teardown, where gloo's worker threads can abort it after the model is written
(segsft.run.dist.end_process_after_group)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO

GROUP = textwrap.dedent(
    """
    import atexit, logging, logging.handlers, os, sys
    import torch
    import torch.distributed as dist

    def join(leave=True):
        from segsft.run.dist import leave_process_group
        os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo")
        out = torch.zeros(4)
        dist.all_gather_into_tensor(out, torch.ones(4), async_op=True).wait()
        if leave:
            leave_process_group()
            assert not dist.is_initialized()

    class Teardown:
        # Runs only in the interpreter's own teardown (module globals cleared).
        def __del__(self, write=os.write):
            write(1, b"teardown\\n")

    def buffer_log():
        # Buffered: only logging's exit handler (logging.shutdown) writes it to the file.
        log = logging.getLogger("segsft.test")
        log.addHandler(logging.handlers.MemoryHandler(
            1000, flushLevel=logging.CRITICAL, target=logging.FileHandler(os.environ["LOG"])))
        log.setLevel(logging.INFO)
        log.propagate = False
        return log

    TEARDOWN = Teardown()
    atexit.register(lambda: print("exit handler ran", flush=True))
    """
)


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(body: str, tmp_path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, str]:
    script = tmp_path / "script.py"
    script.write_text(GROUP + textwrap.dedent(body))
    log = tmp_path / "log.txt"
    log.unlink(missing_ok=True)
    proc = subprocess.run([sys.executable, str(script), *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                                            "LOG": str(log), "MASTER_PORT": _port(), **(env or {})})
    return proc, log.read_text() if log.exists() else ""


def test_a_rank_that_left_its_group_ends_with_its_code_past_the_interpreter_s_teardown(tmp_path):
    proc, log = _run("""
        from segsft.run.dist import end_process_after_group
        join()
        buffer_log().info("model written")
        end_process_after_group(3)
        print("after the end", flush=True)
    """, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["exit handler ran"]  # no "after the end", no "teardown"
    assert log == "model written\n"


def test_without_a_process_group_nothing_ends_early(tmp_path):
    proc, log = _run("""
        from segsft.run.dist import end_process_after_group
        buffer_log().info("done")
        end_process_after_group(3)
        print("after the call", flush=True)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["after the call", "exit handler ran", "teardown"]
    assert log == "done\n"


@pytest.mark.parametrize("leave, body, code, stderr, env", [
    (True, "pass", 0, None, {}),
    (True, "raise SystemExit(2)", 2, None, {}),
    (True, "raise SystemExit('fatal: the message')", 1, "fatal: the message", {}),
    (False, "raise RuntimeError('a rank failed mid-training')", 1, "a rank failed mid-training", {}),
    # Hydra re-raises instead of exiting 1:
    (False, "raise RuntimeError('a rank failed mid-training')", 1, "a rank failed mid-training",
     {"HYDRA_FULL_ERROR": "1"}),
])
def test_the_command_ends_a_rank_with_the_stage_s_exit_code(tmp_path, leave, body, code, stderr, env):
    """Through Hydra, as `python pipeline.py stage=...` runs: the stage (patched) used a group."""
    proc, log = _run(f"""
        import segsft.run.stages as stages
        def stage(cfg):
            join(leave={leave})
            buffer_log().info("stage ran")  # after Hydra configured logging
            {body}
        stages.run_stage = stage
        import segsft.run.cli as cli
        cli.console()
        print("after the command", flush=True)
    """, tmp_path, "stage=select", f"run_dir={tmp_path / 'run'}", env=env)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[-1] == "exit handler ran" and "teardown" not in proc.stdout
    assert "stage ran\n" in log
    if stderr:
        assert stderr in proc.stderr
