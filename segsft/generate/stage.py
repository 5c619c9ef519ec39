"""The generate stage's work (its STAGE is in segsft/generate/__init__.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from segsft.store.hub import is_dataset, spec_problem
from segsft.config_schema import Settings
from segsft.store.layout import GenerationLayout
from segsft.config_schema import empty_dir_problem

log = logging.getLogger(__name__)

KEEP = ("shortest_correct", "all_correct", "first_correct")


def check_config(cfg: Settings) -> list[str]:
    from segsft.run.generation import check_engine
    from segsft.run.models import check_model_location

    g, errs = cfg.generate, []
    if not g.problems:
        errs.append("generate.problems is empty: give a JSONL or Parquet file of problems (id, question, answer)")
    elif is_dataset(g.problems):
        errs += [p for p in [spec_problem(g.problems, "generate.problems")] if p]
    elif not Path(g.problems).is_file():
        errs.append(f"generate.problems={g.problems!r} does not exist: give a JSONL or Parquet file (id, question, answer), "
                    "a dataset directory or hub:<dataset id>")
    if g.keep not in KEEP:
        errs.append(f"generate.keep={g.keep!r}: use one of {list(KEEP)}")
    errs += check_engine(g, "generate")
    errs += [p for p in (empty_dir_problem("generate_dir", cfg.generate_dir),) if p]
    if not cfg.model.name_or_path:
        errs.append("model.name_or_path is empty: give the model that writes the traces")
    return errs + check_model_location(cfg.model)


def choose(rows: list[dict], keep: str) -> list[dict]:
    """The kept samples of one problem among its graded ones (those that closed their thinking)."""
    ok = [r for r in rows if r["correct"] and r["finish_reason"] != "length" and "</think>" in r["output"]]
    if not ok:
        return []
    if keep == "shortest_correct":
        return [min(ok, key=lambda r: (r["output_tokens"], r["sample"]))]
    if keep == "first_correct":
        return [min(ok, key=lambda r: r["sample"])]
    return sorted(ok, key=lambda r: r["sample"])


def run(cfg: Settings | Any, rank: int = 0, world: int = 1) -> Path | None:
    import json

    import polars as pl

    from segsft.store.corpus import Reject, read_problems
    from segsft.run.generation import check_settings, generate_graded, read_generations, source_hash, split_long_prompts
    from segsft.store.io import write_parquet, write_text
    from segsft.schemas import REJECTS_SCHEMA

    cfg = Settings.of(cfg)
    g = cfg.generate
    layout = GenerationLayout(Path(cfg.generate_dir))
    layout.dir.mkdir(parents=True, exist_ok=True)
    check_settings(layout, g, "generate_dir",
                   {"problems": source_hash(str(g.problems), g.fields)})
    problems, rejects = read_problems(g.problems, g.fields, g.limit, key="generate.problems")
    label = str(cfg.model.name_or_path)
    problems, too_long = split_long_prompts(cfg.model, problems, g.max_prompt_tokens, "generate")
    failed: list[tuple[str, str, str]] = []
    generate_graded(cfg.model, label, [("problems", problems)], g.samples, g, layout, rank, world, failed=failed)
    gave_up = {pid: why for _, pid, why in failed}
    rejects = [*rejects, *too_long, *(Reject(p.problem_id, f"row {p.row}: {gave_up[p.problem_id]}", str(g.problems), p.row)
                                      for p in problems if p.problem_id in gave_up)]
    problems = [p for p in problems if p.problem_id not in gave_up]
    gens = read_generations(layout).filter(pl.col("model") == label)
    have = set(gens["problem_id"].to_list())
    if any(p.problem_id not in have for p in problems):
        log.info("generate: rank %d done; the corpus waits for the other ranks' problems", rank)
        return None
    by = {}
    for r in gens.iter_rows(named=True):
        by.setdefault(r["problem_id"], []).append(r)
    lines, out_rejects = [], [{"sample_id": r.sample_id, "reason": r.reason, "source": r.source, "row": r.row}
                              for r in rejects]
    for p in problems:
        kept = choose(by.get(p.problem_id, []), g.keep)
        if not kept:
            n = len(by.get(p.problem_id, []))
            out_rejects.append({"sample_id": p.problem_id, "reason": f"row {p.row}: no correct sample of {n} "
                                f"(generate.keep={g.keep})", "source": str(g.problems), "row": p.row})
            continue
        for r in kept:
            solution = r["output"].split("</think>")[0].removeprefix("<think>").strip("\n")
            pid = p.problem_id if g.keep != "all_correct" else f"{p.problem_id}#s{r['sample']}"
            lines.append(json.dumps({"id": pid, "question": p.question, "solution": solution, "answer": p.answer,
                                     "output_tokens": r["output_tokens"]}))
    write_text(layout.corpus, "".join(x + "\n" for x in lines))
    write_parquet(layout.rejects, out_rejects, REJECTS_SCHEMA)
    print(f"generate: {len(problems)} problems -> {len(lines)} traces in {layout.corpus}; "
          f"{len(out_rejects)} rejected -> {layout.rejects}", flush=True)
    return layout.corpus
