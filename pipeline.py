"""The one entry point: `python pipeline.py stage=attribute|select|finetune|evaluate|report|all|compare|generate`.

Under torchrun the same command shards attribution over ranks. See README.md.
"""

import logging
import os
import sys

#: What Ctrl-C prints: every stage keeps what it finished (atomic files, markers written last),
#: so the same command resumes.
INTERRUPTED = "interrupted: rerun the same command to resume"


def _excepthook(kind, value, tb):  # noqa: ANN001
    """Ctrl-C before main's own handler (while the imports below load): the same one line."""
    if issubclass(kind, KeyboardInterrupt):
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        os._exit(130)
    sys.__excepthook__(kind, value, tb)


sys.excepthook = _excepthook

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import segsft  # noqa: F401,E402  (registers the config's resolvers before Hydra composes it)


_ENTERED = False


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    global _ENTERED
    _ENTERED = True
    from segsft.errors import PipelineError, storage_error
    from segsft.run.hints import make_hints
    from segsft.run.stages import run_stage

    try:
        run_stage(cfg)
    except (PipelineError, OSError) as e:
        # The user's to fix (or the machine's: a full disk, a read-only directory): say what,
        # without a traceback. Any other OSError is a bug and keeps its traceback.
        msg = make_hints(str(e)) if isinstance(e, PipelineError) else storage_error(e)
        if msg is None:
            raise
        logging.getLogger("segsft").error("%s", msg)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from segsft.cli import install

    install(lambda: _ENTERED)
    try:
        main()
    except KeyboardInterrupt:
        # Ctrl-C: one line, and the shell's code for SIGINT.
        logging.getLogger("segsft").warning("%s", INTERRUPTED)
        print(f"\n{INTERRUPTED}", file=sys.stderr, flush=True)
        sys.exit(130)
    except SystemExit as e:
        # Hydra exits 1 when the config does not compose (a value of the wrong type, an unknown
        # key: it names the key in its message). That is the user's to fix, like our checks: 2.
        if e.code == 1 and not _ENTERED:
            sys.exit(2)
        raise
