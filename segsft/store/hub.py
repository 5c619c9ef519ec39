"""Corpora, problems and benchmarks as `datasets` datasets: from the hub or a local directory.

    data.path=hub:<id>[@<revision>][:<config>][:<split>]     (e.g. hub:GAIR/LIMO, hub:open-r1/OpenR1-Math-220k:default:train)
    data.path=<a directory written by Dataset.save_to_disk, or in the hub's layout (data/*.parquet)>

`<id>` is a hub dataset id or a local directory; a split without a config is `hub:<id>::<split>`.
The same form serves generate.problems and evaluate.benchmarks. Everything goes through
`datasets.load_dataset` / `load_from_disk`: rows stay in Arrow files that are memory-mapped, a
rank reads only its own rows (`rows(..., rank, world)`), and the dataset's id, revision and
`datasets` fingerprint say what was read (`identity`).

Adapters (`data.adapter`) turn a corpus whose trace is not a plain column into the
question / solution / answer / id columns that `data.fields` then maps:
- `openr1` (open-r1/OpenR1-Math-220k): question = `problem`, answer = `answer`, id = `uuid`,
  solution = the reasoning inside `<think>...</think>` of the assistant turn of `messages`, or,
  without one, of the first generation that `correctness_math_verify` marks correct.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from segsft.errors import PipelineError

log = logging.getLogger(__name__)

PREFIX = "hub:"


class DatasetError(PipelineError):
    """A dataset that cannot be read (unknown id or split, no access, missing fields)."""


@dataclass(frozen=True)
class DatasetSpec:
    """One `hub:` spec, or a local dataset directory (`local`)."""

    id: str
    revision: str | None = None
    config: str | None = None
    split: str | None = None
    local: bool = False

    def __str__(self) -> str:
        if self.local:
            return self.id
        s = PREFIX + self.id + (f"@{self.revision}" if self.revision else "")
        return s + (f":{self.config or ''}:{self.split}" if self.split else f":{self.config}" if self.config else "")


def is_dataset(path: str | Path) -> bool:
    """A `hub:` spec or a directory (a saved or hub-layout dataset), not a JSONL/Parquet file."""
    return str(path).startswith(PREFIX) or Path(str(path)).is_dir()


def parse(path: str | Path) -> DatasetSpec:
    s = str(path)
    if not s.startswith(PREFIX):
        return DatasetSpec(s, local=True)
    head, *rest = s[len(PREFIX):].split(":")
    ident, _, revision = head.partition("@")
    if not ident or len(rest) > 2:
        raise DatasetError(f"{s}: use hub:<dataset id>[@<revision>][:<config>][:<split>] (a split alone: hub:<id>::<split>)")
    config = rest[0] if rest and rest[0] else None
    split = rest[1] if len(rest) > 1 and rest[1] else None
    return DatasetSpec(ident, revision or None, config, split)


def spec_problem(path: str | Path, key: str) -> str | None:
    """Why `path` cannot name a dataset, checked before anything loads (no network), or None."""
    try:
        parse(path)
    except DatasetError as e:
        return f"{key}: {e}"
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        return f"{key}={path} needs the `datasets` package (a default dependency): pip install datasets"
    return None


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__)[:200]


@contextlib.contextmanager
def _quiet_retries() -> Iterator[None]:
    """huggingface_hub warns twice per retried request (its handler and the run's log); a hub
    that cannot be reached ends in our one line instead, naming the cause."""
    http = logging.getLogger("huggingface_hub.utils._http")
    before = http.level
    http.setLevel(logging.ERROR)
    try:
        yield
    finally:
        http.setLevel(before)


@functools.lru_cache(maxsize=8)
def open_dataset(path: str, default_split: str = "train") -> Any:
    """The `datasets.Dataset` that `path` names (memory-mapped Arrow; opened once per process)."""
    import datasets

    spec = parse(path)
    split = spec.split or default_split
    try:
        saved = any((Path(spec.id) / f).is_file() for f in ("state.json", "dataset_dict.json"))
        if saved:
            ds = datasets.load_from_disk(spec.id)  # save_to_disk's layout
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ValueError(f'Unknown split "{split}". Should be one of {list(ds)}.')
                ds = ds[split]
        else:
            log.info("reading %s through datasets (from its cache, or the Hub)", path)
            with _quiet_retries():
                ds = datasets.load_dataset(spec.id, spec.config, revision=spec.revision, split=split)
    except Exception as e:  # noqa: BLE001 - unknown id, split or config, offline, gated: the user's to fix
        if "split" in str(e).lower():
            raise DatasetError(f"dataset {path} could not be read ({_first_line(e)}): name a split it has "
                               "(hub:<id>[:<config>]:<split>)") from None
        if spec.local or Path(spec.id).is_dir():
            # A local directory: hub advice (login, network) would send the user the wrong way.
            raise DatasetError(f"dataset directory {spec.id} could not be read ({_first_line(e)}): give a directory "
                               "written by datasets' save_to_disk, one of Parquet/JSONL/CSV data files, or a "
                               "JSONL or Parquet file") from None
        raise DatasetError(f"dataset {path} could not be read ({_first_line(e)}): check the id, config and revision, "
                           "your access (huggingface-cli login) and the network (HF_DATASETS_OFFLINE=1 reads the "
                           "cache only)") from None
    if isinstance(ds, datasets.IterableDataset):  # pragma: no cover - load_dataset without streaming
        raise DatasetError(f"dataset {path} is a streaming dataset: give a split that datasets can memory-map")
    return ds


def identity(path: str | Path, default_split: str = "train") -> dict[str, Any]:
    """What was read: the id (or directory), revision, config, split and `datasets` fingerprint."""
    spec = parse(path)
    ds = open_dataset(str(path), default_split)
    return {"dataset": spec.id, "revision": spec.revision, "config": spec.config,
            "split": spec.split or default_split, "rows": len(ds), "fingerprint": ds._fingerprint}


# ---- adapters --------------------------------------------------------------------------------

_THINK = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)


def _think(text: str | None) -> str | None:
    """The reasoning inside <think>...</think> (the whole text when it has no tags)."""
    if not isinstance(text, str):
        return None
    m = _THINK.search(text)
    return (m.group(1) if m else text).strip() or None


def _openr1(rec: Mapping[str, Any]) -> dict[str, Any]:
    trace = None
    for m in rec.get("messages") or []:
        if isinstance(m, Mapping) and m.get("role") == "assistant":
            trace = _think(m.get("content"))
            break
    if trace is None:
        ok = rec.get("correctness_math_verify") or []
        for k, g in enumerate(rec.get("generations") or []):
            if k < len(ok) and ok[k]:
                trace = _think(g)
                break
    return {"id": rec.get("uuid"), "question": rec.get("problem"), "solution": trace, "answer": rec.get("answer")}


#: name -> (columns it reads, row -> standard columns).
ADAPTERS: dict[str, tuple[tuple[str, ...], Callable[[Mapping[str, Any]], dict[str, Any]]]] = {
    "openr1": (("uuid", "problem", "answer", "messages", "generations", "correctness_math_verify"), _openr1),
}
#: name -> the dataset column an adapter's `id` is, so a pass over the ids reads that column only.
ADAPTER_ID_COLUMN = {"openr1": "uuid"}


def adapter_problem(name: str | None) -> str | None:
    if name in (None, "", "none") or name in ADAPTERS:
        return None
    return f"data.adapter={name!r}: use one of {['none', *ADAPTERS]}"


# ---- rows ------------------------------------------------------------------------------------

def rows(path: str | Path, columns: list[str], limit: int | None = None, rank: int = 0, world: int = 1,
         adapter: str | None = None, default_split: str = "train", batch_size: int = 256,
         ) -> Iterator[tuple[int, dict[str, Any]]]:
    """(row index, record) of the rows `rank` owns (every world-th of the first `limit` rows,
    from position rank), read batch by batch from the memory-mapped table: only `columns`
    (those the dataset has; with an adapter, the adapter's) are decoded."""
    from segsft.store.corpus import decode_binary

    ds = open_dataset(str(path), default_split)
    n = len(ds) if limit is None else min(limit, len(ds))
    adapt = ADAPTERS[adapter][1] if adapter not in (None, "", "none") else None
    wanted = list(ADAPTERS[adapter][0]) if adapt else columns
    ds = ds.select_columns([c for c in dict.fromkeys(wanted) if c in ds.column_names])
    mine = range(rank, n, world)
    for start in range(0, len(mine), batch_size):
        idx = mine[start:start + batch_size]
        batch = ds[idx.start:idx.stop] if world == 1 else ds.select(idx)[:]
        for j, i in enumerate(idx):
            rec = {c: batch[c][j] for c in batch}
            decode_binary(rec)
            yield i, adapt(rec) if adapt else rec


def column_names(path: str | Path, adapter: str | None = None, default_split: str = "train") -> list[str]:
    """The dataset's columns (an adapter's output columns when it has one)."""
    if adapter not in (None, "", "none"):
        return ["id", "question", "solution", "answer"]
    return list(open_dataset(str(path), default_split).column_names)


def num_rows(path: str | Path, default_split: str = "train") -> int:
    return len(open_dataset(str(path), default_split))
