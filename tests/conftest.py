"""Shared fixtures: a tokenizer trained on the fly and tiny Qwen2 models (no download)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import pyarrow as pa
import pyarrow.parquet as pq
from html.parser import HTMLParser
from hydra import compose, initialize_config_dir

from segsft.config_schema import ModelConf
from segsft.run.models import load_tokenizer
from segsft.store.shipped import conf_dir
from segsft.method.text import resolve_pattern, split_segments
from tiny_model import save_tiny, tiny_qwen2, train_tokenizer

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
    return load_tokenizer(ModelConf(name_or_path=tiny_model_dir))


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


# ---- shared helpers (no test module imports another) --------------------------------------------

PATTERN = resolve_pattern("default")


def pipeline_env() -> dict:
    """The environment of a pipeline.py subprocess in the tests: one thread, no GPU, this tree."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}


def run_pipeline(*args: str, timeout: int = 300):
    """`python pipeline.py <args>` from the repository root, output captured."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "pipeline.py", *args], cwd=REPO, env=pipeline_env(), capture_output=True,
                          text=True, timeout=timeout)


def compose_config(*overrides: str):
    """The real config of segsft/conf, composed with `overrides` (tests then force CPU and tmp paths)."""
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


#: Few always-kept segments and a tight bound: reports show both trained and masked segments.
REPORT_SELECT = ("select.always_keep=[0]", "select.max_consistency=0.6")


def hand_segments(text: str, split_mid: bool) -> list[tuple[int, int]]:
    """The keyword segments, each also cut at its middle character when `split_mid`: such
    cuts fall inside words, so some tokens straddle them and the first-character rule matters."""
    segs = split_segments(text, PATTERN)
    if not split_mid:
        return segs
    out = []
    for a, b in segs:
        m = (a + b) // 2
        out += [(a, m), (m, b)] if b - a > 2 else [(a, b)]
    return out


def write_masks(path: Path, rows: list[dict], train_of=lambda k, n: k % 3 != 1, split_mid: bool = True) -> Path:
    """A hand-made masks table over `hand_segments`, `train_of(k, n)` per segment."""
    out = []
    for r in rows:
        segs = hand_segments(r["solution"], split_mid)
        for k, (a, b) in enumerate(segs):
            out.append({"sample_id": r["id"], "segment": k, "char_start": a, "char_end": b,
                        "n_tokens": 0, "train": bool(train_of(k, len(segs))), "why": "hand"})
    schema = pa.schema([("sample_id", pa.string()), ("segment", pa.int32()), ("char_start", pa.int32()),
                        ("char_end", pa.int32()), ("n_tokens", pa.int32()), ("train", pa.bool_()), ("why", pa.string())])
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(out, schema=schema), path / "masks.parquet")
    mark_selection_finished(path)
    return path


def mark_selection_finished(path: Path) -> None:
    """What a finished select writes after its masks: config.yaml, then the completion marker."""
    from segsft.store.layout import SelectionLayout

    lay = SelectionLayout(path)
    lay.config.write_text("{}\n")
    lay.marker.write_text("{}\n")


class Page(HTMLParser):
    """What the tests read back: traces, segments with their text, token pieces, references."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.traces: list[dict] = []
        self.segments: list[dict] = []
        self.pieces: list[dict] = []
        self.nav: list[str] = []
        self.refs: list[str] = []
        self.inputs: list[dict] = []
        self.tags_in_segments: set[str] = set()
        #: Every table row's cells (td and th text), in page order; headings by id.
        self.rows: list[list[str]] = []
        self.row_classes: list[str] = []
        self.headings: dict[str, str] = {}
        self._cell: list[str] | None = None
        self._heading: str | None = None
        self._spans: list[dict] = []
        self._in_nav_a = False
        self.feed(text)
        self.close()

    def row(self, first: str) -> list[str]:
        """The other cells of the first table row whose first cell is `first` (stripped)."""
        return next(r[1:] for r in self.rows if r and r[0].strip() == first)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr":
            self.rows.append([])
            self.row_classes.append(a.get("class", ""))
        if tag in ("td", "th") and self.rows:
            self._cell = []
        if tag in ("h2", "h3") and a.get("id"):
            self._heading, self.headings[a["id"]] = a["id"], ""
        for key in ("src", "href", "action", "poster", "data"):
            if a.get(key):
                self.refs.append(a[key])
        if any("seg" in s["cls"] for s in self._spans):
            self.tags_in_segments.add(tag)
        if tag == "section" and "trace" in a.get("class", "").split():
            self.traces.append(a)
        if tag == "input":
            self.inputs.append(a)
        if tag == "a" and a.get("href", "").startswith("#t"):
            self._in_nav_a = True
            self.nav.append(a["href"])
        if tag == "span":
            cls = a.get("class", "").split()
            rec = {**a, "text": "", "cls": cls}
            if "seg" in cls:
                self.segments.append(rec)
            elif "lab" in cls:
                seg = next(s for s in reversed(self._spans) if "seg" in s["cls"])
                seg["labels"] = [*seg.get("labels", []), a["data-label"]]
            elif {"p", "n", "z"} & set(cls):  # a token piece
                rec["segment"] = next(s for s in reversed(self._spans) if "seg" in s["cls"])
                self.pieces.append(rec)
            self._spans.append(rec)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell).strip())
            self._cell = None
        if tag in ("h2", "h3"):
            self._heading = None
        if tag == "span":
            rec = self._spans.pop()
            seg = next((s for s in reversed(self._spans) if "seg" in s["cls"]), None)
            if "kw" in rec["cls"] and seg is not None:  # token pieces may cut a keyword: join them
                seg["kw"] = seg.get("kw", "") + rec["text"]
        if tag == "a":
            self._in_nav_a = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._heading is not None:
            self.headings[self._heading] += data
        for s in self._spans:
            s["text"] += data


