"""Shared fixtures: a tokenizer trained on the fly and tiny Qwen2 models (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from segsft.models import load_tokenizer
from segsft.tiny_model import save_tiny, tiny_qwen2, train_tokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "r1-distill-qwen-7b-aime24.jsonl"

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_file(), reason=f"{SHARED_DATA} is absent (it lies beside the repo, not in a clone)"
)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_CORPUS = [
    "Let me compute 3 + 4. That is 7.\n\nWait, check again: 3 + 4 = 7. Yes.",
    "We need x such that 2x = 10, so x = 5.\n\nAlternatively, divide both sides by 2.",
    "The area is \\frac{1}{2} b h.\n\nHowever, the base is 6 and height 4, giving 12.",
    "Please reason step by step, and put your final answer within \\boxed{}.",
    "So, the final answer is \\boxed{(1, 2)} and \\boxed{x y}.",
]


def shared_rows(n: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in SHARED_DATA.read_text().splitlines()]
    return rows[:n] if n else rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved tiny model directory (safetensors + tokenizer), loadable by name."""
    texts = list(_CORPUS) * 20
    if SHARED_DATA.is_file():
        texts += [r["solution"][:20000] for r in shared_rows()]
    trained = train_tokenizer(texts, vocab_size=1000)
    d = tmp_path_factory.mktemp("tiny-model")
    return str(save_tiny(d, tiny_qwen2(trained), trained))


@pytest.fixture(scope="session")
def tokenizer(tiny_model_dir):
    # Loaded back as the pipeline loads it: transformers picks the class from the
    # model type (Qwen2), whose pre-tokenizer can differ from the freshly trained one.
    return load_tokenizer({"name_or_path": tiny_model_dir})


@pytest.fixture(scope="session")
def tiny_model(tokenizer):
    return tiny_qwen2(tokenizer)


def make_traces(n: int, seed: int = 0) -> list[dict]:
    """Short synthetic traces with keywords, for corpus-level tests without shared/."""
    import random

    rnd = random.Random(seed)
    kws = ["\n\nWait", "\n\nAlternatively", "\n\nHowever", "\n\nBut wait"]
    rows = []
    for i in range(n):
        a, b = rnd.randint(2, 50), rnd.randint(2, 50)
        parts = [f"We add {a} and {b}. The sum is {a + b}."]
        for _ in range(rnd.randint(1, 4)):
            parts.append(f"{rnd.choice(kws)}, let me re-check {a} + {b} = {a + b}.")
        rows.append({"id": f"s{i:03d}", "question": f"What is {a} + {b}?", "solution": "".join(parts), "answer": str(a + b)})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "w") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@pytest.fixture
def cpu_env(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
