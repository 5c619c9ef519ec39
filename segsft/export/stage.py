"""train_tokens.parquet -> the TRL and axolotl datasets (segsft.store.layout.ExportLayout)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from segsft.config_schema import Settings
from segsft.errors import PipelineError
from segsft.schemas import EXPORT_AXOLOTL_SCHEMA, EXPORT_TRL_SCHEMA, IGNORE_INDEX, TRAIN_TOKENS_SCHEMA
from segsft.store.io import parquet_columns, write_parquet, write_text
from segsft.store.layout import ExportLayout, FinetuneLayout

log = logging.getLogger(__name__)


class ExportError(PipelineError):
    """Nothing to export, or a train_tokens file that is not ours."""


def export_dir(cfg: Settings) -> ExportLayout:
    """`export.dir`, or `<finetune_dir>/export` when unset."""
    d = cfg.export.dir
    return ExportLayout(Path(str(d))) if d else FinetuneLayout(Path(str(cfg.finetune_dir))).export


def _gone(path: Path) -> Path:
    """The outermost missing directory on the way to `path` (the run_dir when the run is gone)."""
    missing = path
    for p in path.parents:
        if p.exists():
            break
        missing = p
    return missing


def _read_train_tokens(ft: FinetuneLayout) -> pa.Table:
    if not ft.dir.is_dir():
        raise ExportError(f"{_gone(ft.dir)} does not exist (finetune_dir={ft.dir}): stage=export reads the "
                          f"fine-tuning run's {ft.train_tokens.name}; run stage=finetune first or point "
                          "run_dir / finetune_dir to an existing run")
    if not ft.train_tokens.is_file():
        raise ExportError(f"{ft.train_tokens} does not exist: {ft.dir} holds no fine-tuning run; run stage=finetune "
                          "first (it writes the file before training) or point finetune_dir to one that ran")
    redo = "rerun stage=finetune into a new finetune_dir"
    names = parquet_columns(ft.train_tokens, redo)
    lacking = [c for c in TRAIN_TOKENS_SCHEMA.names if c not in names]
    if lacking:
        raise ExportError(f"{ft.train_tokens} lacks the columns {lacking}: it is not a train_tokens table of "
                          f"segsft; {redo}")
    try:
        table = pq.read_table(ft.train_tokens, columns=list(TRAIN_TOKENS_SCHEMA.names)).cast(TRAIN_TOKENS_SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise ExportError(f"{ft.train_tokens}: columns of other types than segsft writes ({str(e).splitlines()[0]}): "
                          f"{redo}") from None
    if table.num_rows == 0:
        raise ExportError(f"{ft.train_tokens} holds no rows: nothing to export; {redo}")
    nulls = {c: table.column(c).null_count for c in TRAIN_TOKENS_SCHEMA.names if table.column(c).null_count}
    if nulls:
        raise ExportError(f"{ft.train_tokens}: null values in {nulls} (column: rows), which segsft never writes; {redo}")
    return table.combine_chunks()


def _fingerprint(ft: FinetuneLayout) -> dict:
    """What the fine-tuning run recorded of its inputs ({} without a readable record: the export
    needs only the tokens, so it says so and goes on)."""
    if not ft.fingerprint.is_file():
        return {}
    try:
        fp = json.loads(ft.fingerprint.read_text())
    except (OSError, ValueError) as e:
        log.warning("export: %s is not readable JSON (%s): the export's card leaves out its sources", ft.fingerprint, e)
        return {}
    if not isinstance(fp, dict):
        log.warning("export: %s is not a JSON object: the export's card leaves out its sources", ft.fingerprint)
        return {}
    return fp


def _masks(ids: pa.ListArray, labels: pa.ListArray, where: Path) -> tuple[pa.ListArray, pa.ListArray]:
    """(completion_mask, attention_mask), each aligned to the tokens of every row."""
    if not pc.all(pc.equal(pc.list_value_length(ids), pc.list_value_length(labels))).as_py():
        raise ExportError(f"{where}: a row's input_ids and labels differ in length; rerun stage=finetune")
    flat_ids, flat_labels = ids.flatten(), labels.flatten()
    learned = pc.not_equal(flat_labels, IGNORE_INDEX)
    # completion_mask stands for our labels (older TRL rebuilds them from it) only if every set
    # label is its own token, as segsft.finetune.labels makes them.
    if pc.any(pc.not_equal(pc.filter(flat_labels, learned), pc.filter(flat_ids, learned))).as_py():
        raise ExportError(f"{where}: some labels differ from their tokens; it is not a train_tokens table of "
                          "segsft; rerun stage=finetune into a new finetune_dir")
    offsets = labels.offsets
    completion = pa.ListArray.from_arrays(offsets, pc.cast(learned, pa.int8()))
    ones = pa.ListArray.from_arrays(offsets, pa.array([1] * len(flat_ids), pa.int8()))
    return completion, ones


def _card(ft: FinetuneLayout, fp: dict, out: ExportLayout, rows: int, tokens: int, learned: int) -> str:
    source = {k: fp.get(k) for k in ("mode", "selection_dir", "data_path", "model", "max_length")} if fp else {}
    lines = [
        "# segsft export",
        "",
        f"The training tokens of `{ft.dir}` ({rows} sequences, {tokens} tokens, {learned} carry loss), "
        "exactly as segsft's trainer saw them.",
        "",
        *(f"- {k}: `{v}`" for k, v in source.items()),
        "",
        "## TRL",
        "",
        "```python",
        "from datasets import load_dataset",
        "from trl import SFTConfig, SFTTrainer",
        f'ds = load_dataset("{out.trl.parent}", split="train")',
        "# labels are used as they are (-100: no loss); older TRL builds them from completion_mask.",
        "# max_length=None keeps every token (TRL's default cuts at 1024).",
        "args = SFTConfig(output_dir=\"out\", completion_only_loss=True, max_length=None)",
        "SFTTrainer(model=..., args=args, train_dataset=ds).train()",
        "```",
        "",
        "## axolotl (pre-tokenized: no `type:`)",
        "",
        "```yaml",
        "datasets:",
        f"  - path: {out.axolotl.parent}",
        "    ds_type: parquet",
        "```",
        "",
    ]
    return "\n".join(lines)


def run(cfg: Settings | Any) -> dict[str, Path]:
    """Write the export of `cfg.finetune_dir`; returns the files written."""
    cfg = Settings.of(cfg)
    ft = FinetuneLayout(Path(str(cfg.finetune_dir)))
    table = _read_train_tokens(ft)
    out = export_dir(cfg)
    ids, labels = table.column("input_ids").chunk(0), table.column("labels").chunk(0)
    completion, ones = _masks(ids, labels, ft.train_tokens)
    fp = _fingerprint(ft)
    if cfg.selection_dir:
        trained_on = fp.get("selection_dir")
        if trained_on and Path(trained_on).resolve() != Path(str(cfg.selection_dir)).resolve():
            log.warning("export: %s was fine-tuned on the selection %s (not selection_dir=%s): exporting its tokens",
                        ft.dir, trained_on, cfg.selection_dir)
    write_parquet(out.trl, pa.table([table.column("sample_id"), ids, labels, completion], schema=EXPORT_TRL_SCHEMA),
                  EXPORT_TRL_SCHEMA)
    write_parquet(out.axolotl, pa.table([ids, ones, labels], schema=EXPORT_AXOLOTL_SCHEMA), EXPORT_AXOLOTL_SCHEMA)
    learned = pc.sum(pc.cast(completion.flatten(), pa.int64())).as_py() or 0
    write_text(out.card, _card(ft, fp, out, table.num_rows, len(ids.flatten()), learned))
    log.info("export: %d sequences (%d tokens, %d carry loss) of %s -> %s", table.num_rows, len(ids.flatten()),
             learned, ft.train_tokens, out.dir)
    return out.outputs()
