"""Do the masks belong to this corpus? The attribution that made them recorded the corpus's
identity (a file's SHA-256, a dataset's id, revision, split and fingerprint: segsft.store.
fingerprint); an edit that keeps every trace's length (`= 100` -> `= 999`) passes the masks'
span check, so the identities are compared before training."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from segsft.finetune.settings import FinetuneError
from segsft.store.layout import RunLayout, SelectionLayout

log = logging.getLogger(__name__)


def attribution_run_dir(selection_dir: str | Path, default: str | Path) -> Path:
    """The run_dir the selection was made from (its config.yaml), else `default`."""
    saved = SelectionLayout(Path(selection_dir)).config
    try:
        run_dir = OmegaConf.load(saved).get("run_dir") if saved.is_file() else None
    except Exception:  # noqa: BLE001 - a config.yaml we cannot read: fall back to this run's
        run_dir = None
    return Path(str(run_dir or default))


def _short(identity: Any) -> str:
    """A file's hash shortened, or a dataset's id@revision."""
    if isinstance(identity, dict):
        return f"dataset {identity.get('dataset')}@{identity.get('revision')}"
    return f"sha256 {str(identity)[:12]}"


def check_corpus_matches(selection_dir: str | Path, run_dir: str | Path, data_path: str, identity: Any,
                         allow: bool) -> None:
    """Refuse (or, with `allow`, warn about) a corpus that is not the one attributed (its bytes,
    or its dataset identity: store.corpus.corpus_identity)."""
    fp_path = RunLayout(attribution_run_dir(selection_dir, run_dir)).attribution.fingerprint
    if not fp_path.is_file():
        log.warning("finetune: %s is absent, so the corpus cannot be checked against the one the masks of %s "
                    "were made from", fp_path, selection_dir)
        return
    fp = json.loads(fp_path.read_text())
    stored = fp.get("corpus_sha256", fp.get("corpus_dataset"))
    if stored is None or stored == identity:
        return
    what = (f"data.path={data_path} ({_short(identity)}) is not the corpus the masks of {selection_dir} were "
            f"made from ({_short(stored)} in {fp_path})")
    if allow:
        log.warning("finetune: %s; training anyway because finetune.allow_corpus_change=true", what)
        return
    raise FinetuneError(f"{what}: point data.path to that corpus, or rerun attribute and select on this one "
                        "(finetune.allow_corpus_change=true trains anyway)")
