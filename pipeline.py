"""The one entry point: `python pipeline.py stage=attribute|select|finetune|all [overrides]`.

Under torchrun the same command shards attribution over ranks. See README.md.
"""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from segsft.stages import run_stage

    run_stage(cfg)


if __name__ == "__main__":
    main()
