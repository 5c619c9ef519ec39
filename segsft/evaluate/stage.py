"""stage=evaluate: generate k samples per problem of every benchmark with every model, grade
them with math-verify, and tabulate accuracy and output length (segsft.run.generation, segsft.method.grading).

Outputs under `eval_dir` (segsft.store.layout.GenerationLayout): `generations-*.parquet` (one row per
model, benchmark, problem and sample; resumable chunks) and `results.parquet` (one row per model
and benchmark). `evaluate.generations=<file>` grades an existing file without any model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any, Mapping

import polars as pl

from segsft.config_schema import ModelConf, Settings
from segsft.errors import PipelineError
from segsft.evaluate.benchmarks import benchmark_name, load_benchmark, source_path, spec_problem
from segsft.evaluate.results import results, side_by_side
from segsft.run.generation import (check_engine, check_settings, generate_graded, read_generations, source_hash,
                                   split_long_prompts)
from segsft.store.io import write_parquet
from segsft.store.layout import FinetuneLayout, GenerationLayout
from segsft.schemas import GENERATIONS_SCHEMA, REJECTS_SCHEMA, RESULTS_SCHEMA
from segsft.config_schema import empty_dir_problem

log = logging.getLogger(__name__)


def models_of(cfg: Settings) -> list[str]:
    """evaluate.models, or the base model and the run's fine-tuned one (when it exists)."""
    if cfg.evaluate.models:
        return [str(m) for m in cfg.evaluate.models]
    out = [str(cfg.model.name_or_path)]
    tuned = FinetuneLayout(Path(cfg.finetune_dir)).model
    if (tuned / "config.json").is_file():
        out.append(str(tuned))
    return out


def unfinished_finetune(cfg: Settings) -> str | None:
    """One line when evaluation would quietly leave out the run's fine-tuned model: a fine-tuning
    run started in finetune_dir (its records are there) but has no model yet (killed, or still
    running). Checked when the stage runs, so stage=all's own finetune finishes first."""
    lay = FinetuneLayout(Path(cfg.finetune_dir))
    if cfg.evaluate.models or cfg.evaluate.generations is not None or (lay.model / "config.json").is_file():
        return None
    if not (lay.fingerprint.exists() or lay.run_config.exists()):
        return None
    return (f"finetune_dir={lay.dir} holds a fine-tuning run without its model ({lay.model} is absent: it was "
            "stopped, or is still running): rerun stage=finetune with this finetune_dir to resume it, or set "
            "evaluate.models=[...] to name the models to evaluate (e.g. the base model alone)")


def check_config(cfg: Settings) -> list[str]:
    """Every problem of evaluate.* at once."""
    from segsft.run.models import check_model_location

    e = cfg.evaluate
    errs = check_engine(e, "evaluate")
    if not 0 <= e.bootstrap <= 100_000:
        errs.append(f"evaluate.bootstrap={e.bootstrap!r}: use an integer in [0, 100000]")
    errs += [p for p in (empty_dir_problem("eval_dir", cfg.eval_dir),) if p]
    if e.generations is not None:
        if not Path(e.generations).is_file():
            what = "is a directory" if Path(e.generations).is_dir() else "does not exist"
            errs.append(f"evaluate.generations={e.generations!r} {what}: give a JSONL or Parquet file with "
                        f"{_field_name(e.fields, 'id')}, {_answer_name(e.fields)} and output columns")
        return errs
    if not e.benchmarks:
        errs.append("evaluate.benchmarks is empty: name at least one (e.g. [aime24])")
    errs += [p for p in (spec_problem(str(b)) for b in e.benchmarks) if p]
    for m in models_of(cfg):
        said = check_model_location(ModelConf(name_or_path=m))
        # Name the key the user set: evaluate.models, or the base model, or the run's fine-tuned one.
        tuned = str(FinetuneLayout(Path(cfg.finetune_dir)).model)
        key = "evaluate.models" if e.models else f"finetune_dir={cfg.finetune_dir}: its model" if m == tuned else None
        errs += [x.replace("model.name_or_path", key) for x in said] if key else said
    return errs


def grade_file(cfg: Settings, layout: GenerationLayout) -> int:
    """evaluate.generations: grade an existing file (id, answer, output; optional model, benchmark,
    finish_reason) into the generations table, no model loaded."""
    from segsft.store.corpus import FileRows, format_problem, id_text, nested_column_problem, nested_value_problem
    from segsft.method.grading import grade

    path, f = Path(cfg.evaluate.generations), cfg.evaluate.fields
    source = str(path.resolve())  # one file, however its path is spelled
    text_columns = ("output", f.get("answer", "answer"))
    refused = format_problem(path, "evaluate.generations") or nested_column_problem(path, text_columns, "evaluate.generations")
    if refused:
        raise PipelineError(refused)
    rows, rejected, first_why = [], [], None
    lines = FileRows(path, None, "evaluate.generations",
                     f"evaluate.generations={path} is empty: give a JSONL or Parquet file with "
                     f"{_field_name(f, 'id')}, {_answer_name(f)} and output")
    for i, rec, unreadable in lines:
        why = (unreadable.reason.partition(": ")[2] if unreadable is not None
               else _missing(rec, text_columns, f)
               or next((p for p in (nested_value_problem(c, rec.get(c))
                                    for c in (*text_columns, f.get("id", "id"), "model", "benchmark")) if p), None)
               or next((f"{c} is NaN" for c in text_columns if _is_nan(rec.get(c))), None))
        counts = {}
        for column in ("sample", "output_tokens"):
            if why is None:
                counts[column], why = _count(column, rec.get(column))
        if why:
            first_why = first_why or f"row {i}: {why}"
            log.warning("evaluate.generations: row %d of %s skipped: %s", i, path, why)
            pid = unreadable.sample_id if unreadable is not None else rec.get(f.get("id", "id"))
            rejected.append({"sample_id": id_text(pid) if pid is not None else f"row{i}", "reason": why,
                             "source": source, "row": i})
            continue
        answer = str(rec[f.get("answer", "answer")])
        fin = str(rec.get("finish_reason") or "unknown")
        g = grade(str(rec["output"]), answer, fin, rec.get("choices"))
        rows.append({"model": str(rec.get("model") or path.stem), "benchmark": str(rec.get("benchmark") or path.stem),
                     "problem_id": str(rec.get(f.get("id", "id")) or f"row{i}"), "sample": counts["sample"],
                     "output": str(rec["output"]), "output_tokens": counts["output_tokens"],
                     "finish_reason": fin, "answer": answer, "pred": g.pred, "correct": g.correct, "verdict": g.verdict})
    lines.check()  # an empty file, or one without a JSON line, is said as such
    if not rows:
        raise PipelineError(f"evaluate.generations={path}: no row can be graded (first: {first_why}): give "
                            f"{_field_name(f, 'id')}, {_answer_name(f)} and output columns of text (and whole numbers in sample and "
                            "output_tokens, if given)")
    # One chunk per graded file, named for its path: grading the same file again replaces its
    # rows (a corrected file is not shadowed by its first grading); other files' rows stay.
    mine = layout.chunk(f"graded-{_path_key(source)}", 0)
    _refuse_overlap(layout, mine, rows, path)
    write_parquet(mine, rows, GENERATIONS_SCHEMA)
    _write_rejects(layout, source, rejected)
    print(f"evaluate: graded {len(rows)} outputs of {path} ({len(rejected)} skipped: {layout.rejects})", flush=True)
    return len(rows)


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and value != value


def _count(column: str, value: Any) -> tuple[int, str | None]:
    """A whole number for the int32 column `column` (absent or empty: 0), or why not."""
    if value is None or value == "":
        return 0, None
    n = None
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, float) and value.is_integer():
        n = int(value)
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    if n is None or not 0 <= n < 2**31:
        return 0, f"{column}={value!r} is not a whole number in [0, 2^31)"
    return n, None


def _path_key(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:12]


def _refuse_overlap(layout: GenerationLayout, mine: Path, rows: list[dict], path: Path) -> None:
    """Readers keep one row per (model, benchmark, problem_id, sample); two files holding the same
    key would shadow each other in an order no one chose, so the second is refused."""
    from segsft.run.generation import SAMPLE_KEY
    from segsft.store.parts import chunk_keys

    keys = {tuple(r[c] for c in SAMPLE_KEY) for r in rows}
    for other in layout.chunks():
        if other == mine:
            continue
        both = keys & chunk_keys([other], SAMPLE_KEY)
        if both:
            model, bench, pid, sample = sorted(both)[0]
            raise PipelineError(
                f"evaluate.generations={path}: {len(both)} of its rows have the (model, benchmark, problem_id, sample) "
                f"of rows already in {other} (e.g. {model}/{bench}/{pid}/{sample}): set eval_dir=<another directory> "
                f"for this file, give it model or benchmark columns that tell them apart, or delete {other}")


def _field_name(fields: Any, key: str) -> str:
    """A column as the user named it: `answer`, or `'ans' (evaluate.fields.answer)`."""
    col = fields.get(key, key)
    return key if col == key else f"{col!r} (evaluate.fields.{key})"


def _answer_name(fields: Any) -> str:
    return _field_name(fields, "answer")


def _missing(rec: Mapping[str, Any], text_columns: tuple[str, str], fields: Any) -> str | None:
    """Which of the output and answer columns a row lacks, by the names the user gave; None if neither."""
    gone = [c for c in text_columns if rec.get(c) is None]
    if not gone:
        return None
    names = ["output" if c == "output" else _answer_name(fields) for c in gone]
    return f"no {' or '.join(names)}"


def _write_rejects(layout: GenerationLayout, source: str, rejected: list[dict]) -> None:
    """The rows of `source` skipped now, in place of those of its last grading; other files' stay."""
    kept: list[dict] = []
    if layout.rejects.is_file():
        try:
            kept = pl.read_parquet(layout.rejects).filter(pl.col("source") != source).to_dicts()
        except (OSError, pl.exceptions.PolarsError) as e:  # damaged since it was written: rebuilt from now on
            log.warning("evaluate: %s is not readable (%s): it is rewritten with this file's rejects only",
                        layout.rejects, str(e).splitlines()[0])
    write_parquet(layout.rejects, kept + rejected, REJECTS_SCHEMA)


def run(cfg: Settings | Any, rank: int = 0, world: int = 1) -> Path | None:
    cfg = Settings.of(cfg)
    e = cfg.evaluate
    unfinished = unfinished_finetune(cfg)
    if unfinished:
        raise PipelineError(unfinished)
    layout = GenerationLayout(Path(cfg.eval_dir))
    layout.dir.mkdir(parents=True, exist_ok=True)
    if e.generations is not None:
        grade_file(cfg, layout)
        expected = None
    else:
        check_settings(layout, e, "eval_dir",
                       {benchmark_name(str(b)): source_hash(source_path(str(b)), e.fields) for b in e.benchmarks})
        sets, expected = [], {}
        for spec in e.benchmarks:
            probs, rejects = load_benchmark(str(spec), e.fields, e.limit)
            name = benchmark_name(str(spec))
            for r in rejects:
                log.warning("evaluate: %s %s skipped: %s", name, r.sample_id, r.reason)
            sets.append((name, probs))
        rejected: list[dict] = []
        for m in models_of(cfg):
            mcfg = dataclasses.replace(cfg.model, name_or_path=m)
            fitting = []
            for name, probs in sets:
                ok, long_ = split_long_prompts(mcfg, probs, e.max_prompt_tokens, "evaluate")
                fitting.append((name, ok))
                rejected += [{"sample_id": f"{name}/{r.sample_id}", "reason": r.reason, "source": m, "row": r.row}
                             for r in long_]
            failed: list[tuple[str, str, str]] = []
            generate_graded(mcfg, m, fitting, e.samples, e, layout, rank, world, failed=failed)
            gave_up = {(n, pid) for n, pid, _ in failed}
            rejected += [{"sample_id": f"{n}/{pid}", "reason": why, "source": m, "row": None} for n, pid, why in failed]
            for name, probs in fitting:
                expected[(m, name)] = [p.problem_id for p in probs if (name, p.problem_id) not in gave_up]
        for r in rejected:
            log.warning("evaluate: %s (%s) skipped: %s", r["sample_id"], r["source"], r["reason"])
        if rank == 0:  # rewritten every run: a problem that fits now is no longer listed
            write_parquet(layout.rejects, rejected, REJECTS_SCHEMA)
    gens = read_generations(layout)
    if expected is not None:
        # Exactly the problems asked for now (a larger evaluate.limit earlier left more in eval_dir).
        want = pl.DataFrame([{"model": m, "benchmark": b, "problem_id": p} for (m, b), ids in expected.items() for p in ids],
                            schema={"model": pl.String, "benchmark": pl.String, "problem_id": pl.String})
        gens = gens.join(want, on=["model", "benchmark", "problem_id"], how="semi")
        have = set(gens.select("model", "benchmark", "problem_id").unique().rows())
        missing = sum(1 for r in want.rows() if r not in have)
        if missing:
            log.info("evaluate: rank %d done; the results wait for %d problem(s) of the other ranks", rank, missing)
            return None
    table = results(gens, e.bootstrap, e.seed)
    write_parquet(layout.results, table.to_arrow(), RESULTS_SCHEMA)
    print("\n" + side_by_side(table) + f"\n\n-> {layout.results}", flush=True)
    return layout.results

