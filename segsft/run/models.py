"""Loading the causal LM and its tokenizer from a hub id or a local directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from segsft.config_schema import ModelConf
from segsft.errors import PipelineError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16,
          "float64": torch.float64}


def check_model_config(m: ModelConf) -> list[str]:
    """Every problem of the `model` settings that can be seen before anything loads."""
    return [p for p in (dtype_problem("model.dtype", m.dtype),) if p] + check_model_location(m)


def dtype_problem(key: str, value: Any) -> str | None:
    """One line when `value` (of `key`) is neither auto nor a dtype pick_dtype knows; else None."""
    if value == "auto" or value in DTYPES:
        return None
    return f"{key}={value!r}: use auto or one of {sorted(DTYPES)}"


def pick_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(spec)


def pick_dtype(spec: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA, fp32 elsewhere."""
    if spec == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if spec not in DTYPES:
        raise ValueError(f"model.dtype={spec!r}: use auto or one of {sorted(DTYPES)}")
    return DTYPES[spec]


_resolved: dict[str, str] = {}


def model_path(m: ModelConf) -> str:
    """The configured id or directory, or the offline copy of a known model (resolved once)."""
    from segsft.run.model_source import resolve_name_or_path

    name = str(m.name_or_path)
    if name not in _resolved:
        _resolved[name] = resolve_name_or_path(m)
    return _resolved[name]


def check_model_location(m: ModelConf) -> list[str]:
    """What transformers would fail on deep in a stage, said before anything loads: a local path
    that does not exist (anything starting with /, ./, ../ or ~, or holding more than one /
    cannot be a hub id), or a local directory without a config.json that is a JSON object, or
    without any tokenizer file."""
    name = str(m.name_or_path or "")
    looks_local = name.startswith(("/", "./", "../", "~")) or name.count("/") > 1
    want = ("give a model directory (config.json, safetensors, tokenizer) or a hub id such as "
            "HuggingFaceTB/SmolLM2-135M-Instruct")
    path = Path(name).expanduser() if name else None
    if looks_local and not path.exists():
        return [f"model.name_or_path={name!r} does not exist: {want}"]
    if path is None or not path.is_dir():
        return []
    # A local directory: what transformers would fail on deep in a stage, said before any load.
    config = path / "config.json"
    if not config.is_file():
        return [f"model.name_or_path={name!r} holds no config.json: {want}"]
    try:
        ok = isinstance(json.loads(config.read_text(encoding="utf-8")), dict)
    except (OSError, ValueError):
        ok = False
    if not ok:
        return [f"model.name_or_path={name!r}: {config} is not a JSON object: {want}"]
    if not any(_tokenizer_file(f.name) for f in path.iterdir()):
        return [f"model.name_or_path={name!r} holds no tokenizer (tokenizer.json, tokenizer.model, vocab.json ...): {want}"]
    return []


def _tokenizer_file(name: str) -> bool:
    """A file a transformers tokenizer is built from (fast or slow, sentencepiece, BPE, tiktoken)."""
    return (name.startswith(("tokenizer", "vocab", "spiece", "merges", "tekken"))
            or name.endswith((".model", ".tiktoken")))


def load_tokenizer(m: ModelConf) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path(m), revision=m.revision, trust_remote_code=m.trust_remote_code,
                                        use_fast=True)
    if m.chat_template:
        tok.chat_template = m.chat_template
    return tok


def pick_attn_implementation(spec: str, device: torch.device) -> str:
    """`auto`: flash-attention 2 on CUDA where the package is installed, else sdpa."""
    if spec != "auto":
        return spec
    if device.type == "cuda":
        import importlib.util

        if importlib.util.find_spec("flash_attn") is not None:
            return "flash_attention_2"
    return "sdpa"


def load_model(m: ModelConf, device: torch.device, dtype: torch.dtype) -> Any:
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = dict(revision=m.revision, trust_remote_code=m.trust_remote_code, dtype=dtype,
                                  use_safetensors=True,
                                  attn_implementation=pick_attn_implementation(m.attn_implementation, device))
    model = AutoModelForCausalLM.from_pretrained(model_path(m), **kwargs)
    return model.to(device)


def pad_token_id(tokenizer: Any, required: bool = False) -> int | None:
    """The pad id, or eos when the tokenizer has no pad token (as many chat models): the one
    pad fallback of every stage. `required`: a caller that pads a batch cannot go on without one."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        log.info("tokenizer has no pad token: padding and the IG baseline use eos (%s)", tokenizer.eos_token)
        return int(tokenizer.eos_token_id)
    if required:
        raise PipelineError("the tokenizer has neither a pad nor an eos token: use a model whose tokenizer has one")
    return None
