"""Do the masks belong to this corpus? The attribution that made them recorded the corpus's
SHA-256 (segsft.store.fingerprint); an edit that keeps every trace's length (`= 100` ->
`= 999`) passes the masks' span check, so the hashes are compared before training."""

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


def check_corpus_matches(selection_dir: str | Path, run_dir: str | Path, data_path: str, data_sha256: str,
                         allow: bool) -> None:
    """Refuse (or, with `allow`, warn about) a corpus whose bytes differ from the one attributed."""
    fp_path = RunLayout(attribution_run_dir(selection_dir, run_dir)).attribution.fingerprint
    if not fp_path.is_file():
        log.warning("finetune: %s is absent, so the corpus cannot be checked against the one the masks of %s "
                    "were made from", fp_path, selection_dir)
        return
    stored = json.loads(fp_path.read_text()).get("corpus_sha256")
    if stored is None or stored == data_sha256:
        return
    what = (f"data.path={data_path} (sha256 {data_sha256[:12]}) is not the corpus the masks of {selection_dir} were "
            f"made from (sha256 {stored[:12]} in {fp_path})")
    if allow:
        log.warning("finetune: %s; training anyway because finetune.allow_corpus_change=true", what)
        return
    raise FinetuneError(f"{what}: point data.path to that corpus, or rerun attribute and select on this one "
                        "(finetune.allow_corpus_change=true trains anyway)")
