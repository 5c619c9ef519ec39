"""The fine-tuning progress bar: optimizer steps with tokens per second, on the main process.

The Trainer's own bar (off: `disable_tqdm`) shows steps per second, which says little when
sequences range from 1k to 32k tokens. This one shows the tokens the Trainer counts
(`include_num_input_tokens_seen="non_padding"`: real tokens of every rank, gathered) per
second of this launch, and the last logged loss.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from transformers import TrainerCallback

log = logging.getLogger(__name__)


class TokenProgress(TrainerCallback):
    """tqdm over optimizer steps on world process zero; `tokens` and `seconds` of this launch."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.tokens = 0
        self.seconds = 0.0
        self._t0 = 0.0
        self._tokens0 = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._t0, self._tokens0 = time.monotonic(), state.num_input_tokens_seen
        if state.is_world_process_zero:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="finetune", unit="step",
                            dynamic_ncols=True)

    def _measure(self, state: Any) -> None:
        self.tokens = state.num_input_tokens_seen - self._tokens0
        self.seconds = time.monotonic() - self._t0

    def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._measure(state)
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix_str(f"{self.tokens / max(self.seconds, 1e-9):,.0f} tok/s", refresh=True)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kw: Any) -> None:
        if self.bar is not None and logs and "loss" in logs:
            rate = self.tokens / max(self.seconds, 1e-9)
            self.bar.set_postfix_str(f"{rate:,.0f} tok/s, loss {logs['loss']:.4g}", refresh=True)

    def close(self) -> None:
        """Close the bar without the figures (the run stopped): before any error line is printed,
        so that line stays the last one."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._measure(state)
        if self.bar is not None:
            self.bar.close()
            self.bar = None
            log.info("finetune: %d tokens in %.1f s (%.0f tokens/s, all ranks)", self.tokens, self.seconds,
                     self.tokens / max(self.seconds, 1e-9))

    def figures(self) -> dict[str, float | int | None]:
        """For loss_history.json: this launch's tokens and tokens per second."""
        return {"tokens_seen_this_launch": self.tokens,
                "tokens_per_second": round(self.tokens / self.seconds, 1) if self.seconds > 0 else None}
