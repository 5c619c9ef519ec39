"""Stage generate: build a training corpus from problems, as the paper's authors built theirs
(k samples per problem with the model, the shortest correct one kept).

    python pipeline.py stage=generate generate.problems=problems.jsonl|hub:<id> model.name_or_path=<model> \
        generate.samples=32 generate.keep=shortest_correct

Outputs under `generate_dir` (segsft.store.layout.GenerationLayout): `generations-*.parquet` (every
sample with its grade; resumable chunks), `corpus.jsonl` (this pipeline's input: id, question,
solution = the text before `</think>`, answer = the ground truth) and `rejects.parquet`
(problems with no kept sample, and unreadable rows, with the reason).
"""

from __future__ import annotations

from pathlib import Path

from segsft.config_schema import Settings
from segsft.generate.stage import check_config
from segsft.generate.stage import run as _run
from segsft.run.stage_api import FunctionStage
from segsft.store.layout import GenerationLayout

__all__ = ["STAGE"]


def _outputs(s: Settings) -> dict[str, Path]:
    lay = GenerationLayout(Path(s.generate_dir))
    return {"corpus": lay.corpus, "rejects": lay.rejects, "generations": lay.pattern}


#: Every rank (or shard) generates its share of the problems; the last to finish writes the corpus.
STAGE = FunctionStage("generate", check_config, _run, _outputs, sharded=True)
