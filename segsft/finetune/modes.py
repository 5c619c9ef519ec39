"""`finetune.mode`: loss on the selected segments, or on the whole trace (the ablation)."""

MODES = ("selected", "full")
