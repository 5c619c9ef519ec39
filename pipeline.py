"""The one entry point: `python pipeline.py stage=attribute|select|finetune|all [overrides]`.

Under torchrun the same command shards attribution over ranks. See README.md.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

import segsft  # noqa: F401  (registers the config's resolvers before Hydra composes it)


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from segsft.errors import PipelineError
    from segsft.stages import run_stage

    try:
        run_stage(cfg)
    except PipelineError as e:
        # The user's to fix: say what, without a traceback.
        logging.getLogger("segsft").error("%s", e)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
