"""What the package ships beside its code: the Hydra config and the paper's benchmarks.

Found through `importlib.resources`, so a wheel installed anywhere reads the same files as a
clone (setuptools installs package data as plain files: real paths for Hydra and open()).
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _package_dir() -> Path:
    return Path(str(files("segsft")))


def sample_corpus() -> str:
    """The embedded sample corpus (36 rows, data/make_sample.py), shipped in the package so the
    demo runs from any working directory and from a wheel."""
    return str(_package_dir() / "data" / "sample_traces.jsonl")


def conf_dir() -> Path:
    """The Hydra config directory (config.yaml and its groups)."""
    return _package_dir() / "conf"


def deepspeed_dir() -> Path:
    """`finetune.deepspeed=zero2` -> <conf_dir>/deepspeed/zero2.json."""
    return conf_dir() / "deepspeed"


def benchmarks_dir() -> Path:
    """The shipped benchmarks (`evaluate.benchmarks=[math500]` -> <dir>/math500.jsonl)."""
    return _package_dir() / "data" / "benchmarks"
