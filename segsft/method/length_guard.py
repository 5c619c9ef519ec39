"""A cheap bound before tokenizing: a text of n characters has at least n / L tokens, L the
longest token of the vocabulary in characters (a token never covers more characters than its
own string has; byte-level tokens cover at most one character per byte). A factor of 2 more
leaves room for normalizers that merge characters. A text past the bound is rejected without
tokenizing it (a 50 MB trace took 108 s and 10 GB to tokenize only to be rejected)."""

from __future__ import annotations

from typing import Any

#: Room for a normalizer that shortens the text before it is cut into tokens.
SAFETY = 2


def max_token_chars(tokenizer: Any) -> int:
    """The longest token string of `tokenizer` (cached on it: the vocabulary is read once)."""
    cached = getattr(tokenizer, "_segsft_max_token_chars", None)
    if cached is None:
        cached = max((len(t) for t in tokenizer.get_vocab()), default=1) or 1
        try:
            tokenizer._segsft_max_token_chars = cached
        except AttributeError:  # pragma: no cover - a tokenizer that refuses attributes
            pass
    return cached


def surely_too_long(n_chars: int, limit: int, tokenizer: Any) -> bool:
    """True when `n_chars` characters must make more than `limit` tokens (0 = no limit)."""
    return bool(limit) and n_chars > limit * max_token_chars(tokenizer) * SAFETY
