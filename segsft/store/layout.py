"""Where a run's files live: the one module that spells a file or directory name.

    run_dir/
      attribution/                     AttributionLayout
        {segments,samples,rejects}-<part>.parquet, part-<part>.done
        _partial/<part>/{segments,rejects,samples}-<chunk>.parquet   (unfinished)
      selection/<name>/                SelectionLayout: masks, summaries, config.yaml, selection.done
      sweeps/select/sweep.parquet      the multirun table
      finetune/                        FinetuneLayout: model/, train_tokens.parquet, ...
        export/                        ExportLayout: {trl,axolotl}/train.parquet, README.md
      report.html

`<part>` is `<rank>-of-<world>` (5 digits each). A part is finished once its marker exists,
and the marker is written after the part's tables are closed (datatrove's completion
markers), so readers that go through `finished_parts` never see half a part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ATTRIBUTION_TABLES = ("segments", "samples", "rejects")
_PART = re.compile(r"^(\d{5})-of-(\d{5})$")
_TABLE_FILE = re.compile(r"^(segments|samples|rejects)-(\d{5}-of-\d{5})\.parquet$")
_MARKER = re.compile(r"^part-(\d{5}-of-\d{5})\.done$")
_CHUNK = re.compile(r"^(segments|samples|rejects)-(\d{5})\.parquet$")


def part_name(rank: int, world: int) -> str:
    return f"{rank:05d}-of-{world:05d}"


def parse_part(part: str) -> tuple[int, int]:
    """(rank, world) of a part name; ValueError for anything else."""
    m = _PART.match(part)
    if not m:
        raise ValueError(f"not a part name: {part!r}")
    return int(m.group(1)), int(m.group(2))


class PartLocks:
    """The OS lock of each part a writer holds, in a layout's `dir` (segsft.store.parts.part_lock)."""

    dir: Path

    def lock(self, part: str) -> Path:
        """The OS lock a writer of `part` holds (released when its process dies)."""
        return self.dir / f".lock-{part}"

    def lock_holder(self, part: str) -> Path:
        """Who holds `lock(part)`: pid and host, written once the lock is held."""
        return self.dir / f".lock-{part}.holder"


@dataclass(frozen=True)
class AttributionLayout(PartLocks):
    """`run_dir/attribution`: part files, their markers, and the chunks of unfinished parts."""

    dir: Path

    def table(self, table: str, part: str) -> Path:
        return self.dir / f"{table}-{part}.parquet"

    def marker(self, part: str) -> Path:
        return self.dir / f"part-{part}.done"

    @property
    def fingerprint(self) -> Path:
        """The settings the scores were made with (segsft.store.fingerprint)."""
        return self.dir / "fingerprint.json"

    @property
    def consolidate_lock(self) -> Path:
        return self.dir / ".lock-consolidate"

    def pattern(self, table: str) -> str:
        """The glob of `table`'s part files (for messages and Polars scans of finished runs)."""
        return str(self.dir / f"{table}-*.parquet")

    @property
    def partial_root(self) -> Path:
        return self.dir / "_partial"

    def partial(self, part: str) -> Path:
        return self.partial_root / part

    def chunk(self, part: str, table: str, chunk: int) -> Path:
        return self.partial(part) / f"{table}-{chunk:05d}.parquet"

    def chunks(self, part: str) -> dict[int, dict[str, Path]]:
        """Chunk number -> {table: file} of one part's unfinished chunks."""
        out: dict[int, dict[str, Path]] = {}
        for p in self.partial(part).glob("*.parquet") if self.partial(part).is_dir() else []:
            m = _CHUNK.match(p.name)
            if m:
                out.setdefault(int(m.group(2)), {})[m.group(1)] = p
        return out

    def committed_chunks(self, part: str) -> list[int]:
        """A chunk counts once its samples file exists: it is written last."""
        return sorted(c for c, files in self.chunks(part).items() if "samples" in files)

    def partial_parts(self) -> list[str]:
        root = self.partial_root
        return sorted(d.name for d in root.iterdir() if d.is_dir()) if root.is_dir() else []

    def table_files(self) -> dict[str, dict[str, Path]]:
        """table -> {part: file} for every part file on disk, finished or not."""
        out: dict[str, dict[str, Path]] = {t: {} for t in ATTRIBUTION_TABLES}
        for p in sorted(self.dir.iterdir()) if self.dir.is_dir() else []:
            m = _TABLE_FILE.match(p.name)
            if m:
                out[m.group(1)][m.group(2)] = p
        return out

    def markers(self) -> set[str]:
        if not self.dir.is_dir():
            return set()
        return {m.group(1) for p in self.dir.iterdir() if (m := _MARKER.match(p.name))}

    def finished_parts(self) -> list[str]:
        """Parts with a marker and every table."""
        files = self.table_files()
        return sorted(p for p in self.markers() if all(p in files[t] for t in ATTRIBUTION_TABLES))

    def finished(self, table: str) -> list[Path]:
        """The files of `table` of every finished part, in part order."""
        return [self.table(table, p) for p in self.finished_parts()]

    def exists(self) -> bool:
        return self.dir.is_dir() and (any(self.table_files()["segments"].values()) or self.partial_root.is_dir())


@dataclass(frozen=True)
class SelectionLayout:
    """One selection directory. `selection.done` is written last (after config.yaml), and removed
    before a rerun rewrites anything: without it the selection is unfinished, and no reader uses it."""

    dir: Path

    @property
    def masks(self) -> Path:
        return self.dir / "masks.parquet"

    @property
    def summary(self) -> Path:
        return self.dir / "summary.json"

    @property
    def per_sample(self) -> Path:
        return self.dir / "summary_per_sample.parquet"

    @property
    def config(self) -> Path:
        return self.dir / "config.yaml"

    @property
    def marker(self) -> Path:
        """The completion marker: written last, as an attribution part's."""
        return self.dir / "selection.done"

    def outputs(self) -> dict[str, Path]:
        return {p.name: p for p in (self.masks, self.summary, self.per_sample, self.config, self.marker)}

    def finished(self) -> bool:
        return self.masks.is_file() and self.config.is_file() and self.marker.is_file()

    @property
    def redo(self) -> str:
        """What rewrites a damaged file of this selection (the one remedy every reader gives)."""
        return f"delete {self.dir} and rerun the select stage that made it (its settings: {self.config})"

    def unfinished_problem(self, key: str = "selection_dir") -> str | None:
        """One line when this directory is not a finished selection (for every reader), else None."""
        if self.finished():
            return None
        if not self.masks.is_file():
            return (f"{key}={self.dir} holds no {self.masks.name}: run stage=select first, "
                    f"or point {key} to a selection directory")
        return (f"{key}={self.dir} is an unfinished selection (no {self.marker.name}: its select was interrupted "
                "or failed): rerun stage=select with the same settings, then this command")


@dataclass(frozen=True)
class FinetuneLayout:
    """`finetune_dir`: the final model (staged, then renamed), checkpoints and records."""

    OUTPUTS = ("model", "train_tokens", "data_report", "run_config", "fingerprint", "loss_history")

    dir: Path

    @property
    def model(self) -> Path:
        return self.dir / "model"

    @property
    def model_staging(self) -> Path:
        return self.dir / "model.partial"

    @property
    def train_tokens(self) -> Path:
        return self.dir / "train_tokens.parquet"

    @property
    def loss_history(self) -> Path:
        return self.dir / "loss_history.json"

    @property
    def data_report(self) -> Path:
        return self.dir / "data_report.json"

    @property
    def run_config(self) -> Path:
        return self.dir / "run_config.json"

    @property
    def fingerprint(self) -> Path:
        """What the checkpoints depend on (segsft.store.fingerprint.check_or_store guards it)."""
        return self.dir / "fingerprint.json"

    @property
    def tensorboard(self) -> Path:
        """finetune.report_to=tensorboard: the event files (`tensorboard --logdir <this>`)."""
        return self.dir / "tensorboard"

    @property
    def export(self) -> "ExportLayout":
        """stage=export's default output: train_tokens as a dataset TRL and axolotl read."""
        return ExportLayout(self.dir / "export")


@dataclass(frozen=True)
class ExportLayout:
    """stage=export's directory: one dataset per tool, each a Parquet file named for its split,
    so `datasets.load_dataset(<dir>/trl)` reads it as the `train` split (axolotl: `path:`)."""

    dir: Path

    @property
    def trl(self) -> Path:
        """input_ids + completion_mask (TRL's SFTTrainer, completion_only_loss)."""
        return self.dir / "trl" / "train.parquet"

    @property
    def axolotl(self) -> Path:
        """Exactly input_ids, attention_mask, labels (axolotl's pre-tokenized format)."""
        return self.dir / "axolotl" / "train.parquet"

    @property
    def card(self) -> Path:
        """How to train on them with TRL or axolotl."""
        return self.dir / "README.md"

    def outputs(self) -> dict[str, Path]:
        return {"trl": self.trl, "axolotl": self.axolotl, "card": self.card}


@dataclass(frozen=True)
class RunLayout:
    """Everything under one `run_dir`."""

    run_dir: Path

    def __init__(self, run_dir: str | Path):
        object.__setattr__(self, "run_dir", Path(run_dir))

    @property
    def attribution(self) -> AttributionLayout:
        return AttributionLayout(self.run_dir / RUN_DIRS["attribution"])

    @property
    def selection_root(self) -> Path:
        return self.run_dir / RUN_DIRS["selection"]

    def selection(self, name_or_dir: str | Path) -> SelectionLayout:
        """A selection by name (under selection/) or by its directory."""
        p = Path(name_or_dir)
        return SelectionLayout(p if p.is_absolute() or len(p.parts) > 1 else self.selection_root / p)

    def selections(self) -> list[SelectionLayout]:
        root = self.selection_root
        return [SelectionLayout(d) for d in sorted(root.iterdir()) if d.is_dir()] if root.is_dir() else []

    @property
    def sweep_table(self) -> Path:
        return self.run_dir / RUN_DIRS["sweeps"] / "select" / SWEEP_FILE

    @property
    def agreement(self) -> Path:
        """stage=compare: pairwise agreement of the selections under selection/."""
        return self.run_dir / RUN_DIRS["compare"] / "agreement.parquet"

    @property
    def finetune(self) -> FinetuneLayout:
        return FinetuneLayout(self.run_dir / RUN_DIRS["finetune"])

    @property
    def report(self) -> Path:
        return self.run_dir / REPORT_FILE

    @property
    def recap(self) -> Path:
        """stage=all: the end-of-run summary as data (what it prints, in numbers)."""
        return self.run_dir / "recap.json"


@dataclass(frozen=True)
class GenerationLayout(PartLocks):
    """stage=evaluate's eval_dir or stage=generate's generate_dir: resumable generation chunks
    (`generations-<part>-<chunk>.parquet`, each written atomically; readers take every chunk,
    each (model, benchmark, problem_id, sample) once) and what is made from them."""

    dir: Path

    def chunk(self, part: str, n: int) -> Path:
        return self.dir / f"generations-{part}-{n:05d}.parquet"

    def chunks(self, part: str | None = None) -> list[Path]:
        return sorted(self.dir.glob(f"generations-{part or '*'}-*.parquet")) if self.dir.is_dir() else []

    @property
    def pattern(self) -> Path:
        """The glob of every chunk (for messages and Polars scans)."""
        return self.dir / "generations-*.parquet"

    @property
    def results(self) -> Path:
        """evaluate: one row per (model, benchmark)."""
        return self.dir / "results.parquet"

    @property
    def corpus(self) -> Path:
        """generate: the training corpus (this pipeline's input format)."""
        return self.dir / "corpus.jsonl"

    @property
    def rejects(self) -> Path:
        """generate: problems with no kept sample; evaluate: problems skipped (prompt too long,
        out of memory even alone); each with the reason."""
        return self.dir / "rejects.parquet"

    @property
    def settings(self) -> Path:
        """What the generations were made with (a rerun with other settings is refused)."""
        return self.dir / "settings.json"


REPORT_FILE = "report.html"
SWEEP_FILE = "sweep.parquet"
#: One row per finished job of a multirun, in the job's Hydra output directory.
SWEEP_ROW_FILE = "sweep_row.parquet"


def selection_name(method: Any, top_mass: Any, max_consistency: Any = None, min_consistency: Any = None,
                   min_tokens: Any = 0, seed: Any = 0, unconverged: Any = "keep", score: Any = None,
                   order: Any = "high", borderline: Any = "rule") -> str:
    """The selection directory's name from the select settings, unset keys left out
    (`attribution-top0.7-maxc0.8`, `random-top0.7-maxc0.8-seed3`, `score-nll_mean-high-top0.7-maxc0.8`, ...)."""
    parts = [str(method)] + ([str(score), str(order)] if method == "score" else []) + [f"top{top_mass}"]
    if max_consistency is not None:
        parts.append(f"maxc{max_consistency}")
    if min_consistency is not None:
        parts.append(f"minc{min_consistency}")
    if min_tokens:
        parts.append(f"mintok{min_tokens}")
    if method == "random" or seed:
        parts.append(f"seed{seed}")
    if unconverged not in (None, "keep"):
        parts.append(f"unconverged-{unconverged}")
    if borderline not in (None, "rule"):
        parts.append(f"borderline-{borderline}")
    return "-".join(parts)


#: The directories of a run under run_dir, by role: the one place their names are spelled
#: (conf/config.yaml takes them through ${segsft_run_path:${run_dir},<role>}).
RUN_DIRS = {"attribution": "attribution", "selection": "selection", "finetune": "finetune", "eval": "eval",
            "generate": "generated", "logs": "logs", "sweeps": "sweeps", "compare": "compare"}


def run_path(run_dir: Any, role: str) -> str:
    """`run_dir/<the directory of role>` (RUN_DIRS): the config's default directory keys."""
    if role not in RUN_DIRS:
        raise ValueError(f"no run directory for {role!r}: use one of {sorted(RUN_DIRS)}")
    return str(Path(str(run_dir)) / RUN_DIRS[role])


def log_dir(stage: str, shard_index: Any = None, shard_count: Any = 1) -> str:
    """hydra.run.dir below run_dir/logs: `<stage>`, or `<stage>/shard-<part>` for a job of one
    shard (shard.index), so the jobs of a split never append to one log file."""
    return stage if shard_index is None else f"{stage}/shard-{part_name(shard_index, shard_count)}"


def sweep_subdir(job_num: Any, shard_index: Any = None, shard_count: Any = 1) -> str:
    """hydra.sweep.subdir: the job's number, or `shard-<part>` for a job of one shard: a requeued or
    rerun shard keeps its directory whatever its number in the sweep."""
    return str(job_num) if shard_index is None else f"shard-{part_name(shard_index, shard_count)}"


def register_resolvers() -> None:
    """`${segsft_selection_name:...}` (config_schema.SELECTION_NAME, select.name), `${segsft_log_dir:...}`,
    `${segsft_sweep_subdir:...}` (segsft/conf/config.yaml's hydra dirs) and `${segsft_run_path:...}`
    (its directory keys), `${segsft_sample:}` (the embedded sample corpus); idempotent."""
    from omegaconf import OmegaConf

    from segsft.store.shipped import sample_corpus

    for name, fn in (("segsft_selection_name", selection_name), ("segsft_log_dir", log_dir),
                     ("segsft_sweep_subdir", sweep_subdir), ("segsft_run_path", run_path),
                     ("segsft_sample", sample_corpus)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)



