"""A process that took part in a torch process group (a torchrun rank of stage=finetune) ends
with its own exit code after its exit handlers ran, and without the interpreter's teardown, where
gloo's worker threads can abort it after the model is written (segsft.run.dist)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

from conftest import REPO

GROUP = textwrap.dedent(
    """
    import atexit, logging, os, sys
    import torch
    import torch.distributed as dist

    def join_and_leave():
        from segsft.run.dist import leave_process_group
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
        dist.init_process_group("gloo")
        out = torch.zeros(4)
        dist.all_gather_into_tensor(out, torch.ones(4), async_op=True).wait()
        leave_process_group()
        assert not dist.is_initialized()

    logging.basicConfig(filename=sys.argv[2], level=logging.INFO)
    atexit.register(lambda: print("exit handler ran", flush=True))
    """
)


def _port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(body: str, tmp_path) -> tuple[subprocess.CompletedProcess, str]:
    script = tmp_path / "script.py"
    script.write_text(GROUP + textwrap.dedent(body))
    log = tmp_path / "log.txt"
    proc = subprocess.run([sys.executable, str(script), _port(), str(log)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                       "PATH": "/usr/bin:/bin"})
    return proc, log.read_text() if log.exists() else ""


def test_a_rank_that_left_its_group_ends_with_its_code_after_its_exit_handlers(tmp_path):
    proc, log = _run("""
        from segsft.run.dist import end_process_after_group
        join_and_leave()
        logging.getLogger("segsft").info("model written")
        end_process_after_group(3)
        print("after the end", flush=True)
    """, tmp_path)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["exit handler ran"]
    assert "model written" in log  # logging's own exit handler flushed the file


def test_without_a_process_group_nothing_ends_early(tmp_path):
    proc, _ = _run("""
        from segsft.run.dist import end_process_after_group
        end_process_after_group(3)
        print("after the call", flush=True)
    """, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["after the call", "exit handler ran"]


def test_the_command_ends_a_rank_with_the_stage_s_exit_code(tmp_path):
    for code, body in ((0, "join_and_leave()"), (2, "join_and_leave(); raise SystemExit(2)")):
        proc, _ = _run(f"""
            import segsft.run.cli as cli
            def stage(*a, **k):
                {body}
            cli.main = stage
            cli.console()
            print("after the command", flush=True)
        """, tmp_path)
        assert proc.returncode == code, proc.stderr[-2000:]
        assert proc.stdout.splitlines() == ["exit handler ran"]
