"""Where each attributed token lies in the trace text, for token shading.

`segsft.method.text.build_sequence`, the attribution's own tokenization, gives each token's first
character. The segment token spans in the table are the check: a sample whose sequence
disagrees (another tokenizer, another suffix) gets segment-level shading only, never
misplaced token colours.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from segsft.method.text import build_sequence, token_spans

log = logging.getLogger(__name__)


class TokenMismatch(ValueError):
    """The tokenizer does not reproduce the segment token spans of the attribution table."""


def token_starts(tokenizer: Any, question: str, solution: str, answer: str, answer_suffix: str,
                 segments: list[dict]) -> list[np.ndarray]:
    """Per segment, the first character (into the trace) of each of its tokens, in order."""
    seq = build_sequence(tokenizer, question, solution, None, answer, answer_suffix)
    starts, n_prompt = seq.body_starts, seq.n_prompt
    spans = token_spans(starts, [(int(r["char_start"]), int(r["char_end"])) for r in segments])
    out = []
    for r, (a, b) in zip(segments, spans):
        if (a + n_prompt, b + n_prompt) != (r["token_start"], r["token_end"]) or len(r["token_attr"]) != b - a:
            raise TokenMismatch(
                f"segment {r['segment']}: tokens [{r['token_start']}, {r['token_end']}) in the table "
                f"({len(r['token_attr'])} attributions), [{a + n_prompt}, {b + n_prompt}) from this tokenizer"
            )
        out.append(starts[a:b].copy())
    return out


def load(model_cfg: Any) -> tuple[Any | None, str | None]:
    """(the run's tokenizer, None) or (None, why it could not be loaded)."""
    try:
        from segsft.run.models import load_tokenizer

        return load_tokenizer(model_cfg), None
    except Exception as e:  # any loading failure means: segment-level shading only
        log.warning("report: no tokenizer (%s); token shading is off", e)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
