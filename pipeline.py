"""`python pipeline.py stage=attribute|select|finetune|evaluate|report|all|compare|generate|export [overrides]`:
the same command as the installed `segsft` (segsft.run.cli). Under torchrun it shards attribution over ranks.
See README.md."""

import sys

from segsft.run.interrupt import on_interrupt_while_importing

sys.excepthook = on_interrupt_while_importing

from segsft.run.cli import console  # noqa: E402

if __name__ == "__main__":
    console()
