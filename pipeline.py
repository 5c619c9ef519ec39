"""`python pipeline.py stage=attribute|select|finetune|evaluate|report|all|compare|generate|export [overrides]`:
the same command as the installed `segsft` (segsft.run.cli). Under torchrun it shards attribution over ranks.
See README.md."""

from segsft.run.cli import console

if __name__ == "__main__":
    console()
