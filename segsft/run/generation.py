"""The one generation engine of stage=evaluate and stage=generate.

- vLLM where it is installed and CUDA is present (`engine=auto|vllm`): the prompts of a chunk
  in one `LLM.generate` call, `n` samples per prompt, the paper's sampling settings.
- HF `generate` otherwise (`engine=hf`, the CPU path): prompts sorted by length and batched
  (`batch_size`, left padding), `num_return_sequences` samples each, a progress bar with tokens/s.

Prompts are the attribution's (segsft.method.text.encode_prompt: the chat template and the same user
message), so a model is asked exactly what it was trained on. Sampling is seeded per batch from
(seed, the batch's first problem id), so a rerun of the same problems gives the same outputs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import time
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

from segsft.config_schema import EngineConf, ModelConf
from segsft.store.corpus import ProblemRow, Reject

log = logging.getLogger(__name__)

ENGINES = ("auto", "vllm", "hf")


@dataclass(frozen=True)
class Completion:
    problem_id: str
    sample: int
    text: str
    tokens: int
    finish_reason: str  # stop | length


def check_engine(node: EngineConf, prefix: str) -> list[str]:
    """Every problem of the engine and sampling keys of `evaluate` or `generate` (EngineConf)."""
    errs = []
    if node.engine not in ENGINES:
        errs.append(f"{prefix}.engine={node.engine!r}: use one of {list(ENGINES)}")
    if node.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        errs.append(f"{prefix}.engine=vllm but vllm is not installed: pip install -e '.[vllm]' (CUDA), or use engine=hf")
    for key, lo, hi in (("samples", 1, 1024), ("max_new_tokens", 1, 1 << 20), ("batch_size", 1, 4096),
                        ("chunk_problems", 1, 1 << 20), ("tensor_parallel_size", 1, 64)):
        if not lo <= getattr(node, key) <= hi:
            errs.append(f"{prefix}.{key}={getattr(node, key)!r}: use an integer in [{lo}, {hi}]")
    if not 0 <= node.temperature <= 10:
        errs.append(f"{prefix}.temperature={node.temperature!r}: use a number in [0, 10] (0 = greedy)")
    elif node.temperature == 0 and node.samples > 1:
        errs.append(f"{prefix}.temperature=0 (greedy) with {prefix}.samples={node.samples}: greedy decoding gives one "
                    f"output per problem; set {prefix}.samples=1 or a temperature > 0")
    if not 0 < node.top_p <= 1:
        errs.append(f"{prefix}.top_p={node.top_p!r}: use a number in (0, 1]")
    if not 0 < node.gpu_memory_utilization <= 1:
        errs.append(f"{prefix}.gpu_memory_utilization={node.gpu_memory_utilization!r}: use a number in (0, 1]")
    if not 0 <= node.max_prompt_tokens <= 1 << 24:
        errs.append(f"{prefix}.max_prompt_tokens={node.max_prompt_tokens!r}: use 0 (the model's context length) or "
                    "an integer >= 1")
    if node.limit is not None and node.limit < 1:
        errs.append(f"{prefix}.limit={node.limit!r}: use null (every problem) or an integer >= 1")
    from segsft.run.models import dtype_problem

    errs += [p for p in (dtype_problem(f"{prefix}.dtype", node.dtype),) if p]
    return errs


def pick_engine(spec: str) -> str:
    """`auto`: vllm when importable and CUDA is present, else hf. The GPU count comes from NVML,
    so CUDA is not initialised here: vLLM's engine must find it uninitialised to be given this
    rank's GPU (segsft.run.dist.pin_engine_devices)."""
    if spec != "auto":
        return spec
    if importlib.util.find_spec("vllm") is None:
        return "hf"
    import torch

    return "vllm" if torch.cuda.device_count() > 0 else "hf"


def batch_seed(seed: int, first_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{first_id}".encode(), digest_size=4).digest(), "little")


class HFEngine:
    """transformers' generate, batched by prompt length."""

    def __init__(self, model_cfg: ModelConf, settings: Any, device: Any = None):
        import torch

        from segsft.run.dist import local_rank
        from segsft.run.models import load_model, load_tokenizer, pad_token_id, pick_device, pick_dtype

        self.s = settings
        self.device = device or pick_device("auto", local_rank())
        self.tokenizer = load_tokenizer(model_cfg)
        self.model = load_model(model_cfg, self.device, pick_dtype(settings.dtype, self.device)).eval()
        self.pad = pad_token_id(self.tokenizer, required=True)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, (list, tuple)) else [eos if eos is not None else self.tokenizer.eos_token_id])
        self.torch = torch

    def prompts(self, problems: Sequence[ProblemRow]) -> list[list[int]]:
        from segsft.method.text import encode_prompt

        return [encode_prompt(self.tokenizer, p.question).tolist() for p in problems]

    def generate(self, problems: Sequence[ProblemRow], k: int, progress: Any = None) -> Iterator[list[Completion]]:
        """Completions per batch of prompts (k per problem), longest prompts first. A batch that
        runs out of memory is halved and retried; a single prompt that still does is given up
        (in `self.failed` with the reason), and the others go on."""
        ids = self.prompts(problems)
        self.failed: list[tuple[str, str]] = []
        order = sorted(range(len(problems)), key=lambda i: (-len(ids[i]), problems[i].problem_id))
        for lo in range(0, len(order), max(1, self.s.batch_size)):
            batch = order[lo:lo + max(1, self.s.batch_size)]
            done = self._fitting(problems, ids, batch, k)
            if progress is not None:
                progress.update(len(batch), sum(c.tokens for c in done))
            yield done

    def _fitting(self, problems: Sequence[ProblemRow], ids: list[list[int]], batch: list[int], k: int) -> list[Completion]:
        try:
            return self._batch(problems, ids, batch, k)
        except (RuntimeError, MemoryError) as e:
            if not is_oom(e):
                raise
            if self.device.type == "cuda":
                self.torch.cuda.empty_cache()
            if len(batch) == 1:
                p = problems[batch[0]]
                why = (f"out of memory generating {k} sample(s) of a {len(ids[batch[0]])}-token prompt "
                       "(lower max_new_tokens or samples)")
                log.warning("generate: %s: %s", p.problem_id, why)
                self.failed.append((p.problem_id, why))
                return []
            half = len(batch) // 2
            log.warning("generate: out of memory with %d prompts per batch: retrying in halves", len(batch))
            return self._fitting(problems, ids, batch[:half], k) + self._fitting(problems, ids, batch[half:], k)

    def _batch(self, problems: Sequence[ProblemRow], ids: list[list[int]], batch: list[int], k: int) -> list[Completion]:
        torch = self.torch
        width = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, i in enumerate(batch):  # left padding: every prompt ends where generation starts
            input_ids[row, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[row, width - len(ids[i]):] = 1
        torch.manual_seed(batch_seed(self.s.seed, problems[batch[0]].problem_id))
        sample = self.s.temperature > 0
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                max_new_tokens=self.s.max_new_tokens, do_sample=sample, num_return_sequences=k,
                temperature=self.s.temperature if sample else None, top_p=self.s.top_p if sample else None,
                top_k=None, pad_token_id=self.pad)
        new = out[:, width:].cpu()
        done = []
        for j in range(new.shape[0]):
            p = problems[batch[j // k]]
            toks = new[j].tolist()
            end = next((t for t, x in enumerate(toks) if x in self.eos), None)
            n = len(toks) if end is None else end
            text = self.tokenizer.decode(toks[:n], skip_special_tokens=True)
            done.append(Completion(p.problem_id, j % k, text, n, "stop" if end is not None else "length"))
        return done


def is_oom(e: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the CPU allocator's "can't allocate memory"."""
    if isinstance(e, MemoryError):
        return True
    text = str(e)
    return "out of memory" in text.lower() or "can't allocate memory" in text


def context_length(model_cfg: ModelConf) -> int:
    """The model's max_position_embeddings (0 when its config does not say)."""
    from transformers import AutoConfig

    from segsft.run.models import model_path

    conf = AutoConfig.from_pretrained(model_path(model_cfg), trust_remote_code=model_cfg.trust_remote_code)
    return int(getattr(conf, "max_position_embeddings", 0) or 0)


def split_long_prompts(model_cfg: ModelConf, problems: Sequence[ProblemRow], limit: int, key: str
                       ) -> tuple[list[ProblemRow], list[Reject]]:
    """(problems whose prompt fits `limit` tokens, rejects "prompt too long (N tokens > limit)").
    `limit` 0 = the model's context length. A prompt past the character bound is rejected
    without tokenizing it (segsft.method.length_guard)."""
    from segsft.method.length_guard import surely_too_long
    from segsft.run.models import load_tokenizer
    from segsft.method.text import encode_prompt

    limit = limit or context_length(model_cfg)
    if not limit:
        return list(problems), []
    tokenizer = load_tokenizer(model_cfg)
    ok, rejects = [], []
    for p in problems:
        if surely_too_long(len(p.question), limit, tokenizer):
            why = f"prompt too long ({len(p.question):,} characters, more than {limit} tokens can hold)"
        else:
            n = len(encode_prompt(tokenizer, p.question))
            why = f"prompt too long ({n} tokens > {limit})" if n > limit else ""
        if why:
            rejects.append(Reject(p.problem_id, f"row {p.row}: {why}: raise {key}.max_prompt_tokens (up to the "
                                  "model's context) or leave the problem out", str(model_cfg.name_or_path), p.row))
        else:
            ok.append(p)
    return ok, rejects


class VLLMEngine:
    """vLLM: every prompt of a chunk in one call; `n` samples per prompt. Under torchrun each
    rank's engine is a whole copy of the model on its own GPU(s) (LOCAL_RANK's share of the
    visible devices, tensor_parallel_size each): data parallel over the ranks."""

    def __init__(self, model_cfg: ModelConf, settings: Any, llm_kwargs: dict | None = None):
        from segsft.run.dist import pin_engine_devices

        # Before vllm is imported or started: CUDA takes the device list once per process.
        self.devices = pin_engine_devices(settings.tensor_parallel_size)
        from vllm import LLM

        from segsft.run.models import load_tokenizer, model_path

        self.s = settings
        self.tokenizer = load_tokenizer(model_cfg)
        revision = model_cfg.revision  # the same revision for weights and tokenizer, as HF loads them
        dtype = "auto" if settings.dtype == "auto" else settings.dtype
        # gpu_memory_utilization is a share of this engine's own GPU(s), not of one shared GPU 0.
        self.llm = LLM(model=model_path(model_cfg), tokenizer=model_path(model_cfg), revision=revision,
                       tokenizer_revision=revision, dtype=dtype, seed=settings.seed,
                       tensor_parallel_size=settings.tensor_parallel_size,
                       gpu_memory_utilization=settings.gpu_memory_utilization,
                       trust_remote_code=model_cfg.trust_remote_code,
                       max_model_len=None, **(llm_kwargs or {}))

    def generate(self, problems: Sequence[ProblemRow], k: int, progress: Any = None) -> Iterator[list[Completion]]:
        from vllm import SamplingParams

        from segsft.method.text import encode_prompt

        params = SamplingParams(n=k, temperature=self.s.temperature, top_p=self.s.top_p,
                                max_tokens=self.s.max_new_tokens,
                                seed=batch_seed(self.s.seed, problems[0].problem_id) if problems else self.s.seed)
        prompts = [{"prompt_token_ids": encode_prompt(self.tokenizer, p.question).tolist()} for p in problems]
        outs = self.llm.generate(prompts, params, use_tqdm=False)
        done = []
        for p, o in zip(problems, outs):
            for j, c in enumerate(o.outputs):
                done.append(Completion(p.problem_id, j, c.text, len(c.token_ids),
                                       "length" if c.finish_reason == "length" else "stop"))
        if progress is not None:
            progress.update(len(problems), sum(c.tokens for c in done))
        yield done


def load_engine(model_cfg: ModelConf, settings: Any) -> HFEngine | VLLMEngine:
    engine = pick_engine(settings.engine)
    log.info("generation engine: %s for %s", engine, model_cfg.name_or_path)
    return VLLMEngine(model_cfg, settings) if engine == "vllm" else HFEngine(model_cfg, settings)


class Progress:
    """A tqdm bar over problems with generated tokens per second."""

    def __init__(self, total: int, desc: str, disable: bool = False):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="problem", disable=disable)
        self.tokens, self.t0 = 0, time.monotonic()

    def update(self, problems: int, tokens: int) -> None:
        self.tokens += tokens
        self.bar.update(problems)
        self.bar.set_postfix(tok_s=f"{self.tokens / max(time.monotonic() - self.t0, 1e-9):.0f}")

    def close(self) -> None:
        self.bar.close()


#: The settings a generations directory was made with; a rerun with others is refused.
SETTING_KEYS = ("temperature", "top_p", "max_new_tokens", "seed", "samples")


def check_settings(layout: Any, node: Any, what: str, sources: dict[str, str]) -> None:
    """Store the sampling settings (SETTING_KEYS of `node`, an evaluate or generate settings
    object) and the problem sources (name -> content hash) of a new directory; refuse to add
    generations of other settings, or of a problem set whose content changed under the same
    name (its finished problems would be paired with other questions)."""
    settings = {k: getattr(node, k) for k in SETTING_KEYS}

    from segsft.store.fingerprint import SettingsChanged, read_record, settings_diff
    from segsft.store.io import write_json

    if not layout.settings.is_file():
        write_json(layout.settings, {**settings, "sources": sources})
        return
    stored = read_record(layout.settings)
    if stored is None:
        raise SettingsChanged(f"{layout.settings} is not a settings record this pipeline wrote (not a JSON object): the "
                              f"generations in {layout.dir} were made with settings no one can tell now; set a new "
                              f"{what}=... (or delete {layout.dir} to start over)")
    diff = settings_diff(stored, settings, SETTING_KEYS)
    old = stored.get("sources") or {}
    diff += [f"the problems of {n!r} changed" for n, h in sources.items() if n in old and old[n] != h]
    if diff:
        raise SettingsChanged(f"{layout.dir} holds generations made with other settings ({'; '.join(diff)}): set a new "
                              f"{what}=... for these settings, or restore them to resume")
    if any(n not in old for n in sources):
        write_json(layout.settings, {**stored, "sources": {**old, **sources}})


def source_hash(path_or_spec: str, fields: Any) -> str:
    """What a problem set's content is: the file's SHA-256 (or the hub spec) and the field mapping."""
    import hashlib
    from pathlib import Path

    from segsft.store.io import file_sha256

    base = file_sha256(path_or_spec) if Path(path_or_spec).is_file() else path_or_spec
    mapping = ",".join(f"{k}={fields[k]}" for k in sorted(fields))
    return hashlib.sha256(f"{base}\x00{mapping}".encode()).hexdigest()


#: A generated sample's key; a chunk holds all k samples of each of its problems.
SAMPLE_KEY = ("model", "benchmark", "problem_id", "sample")


def done_keys(layout: Any) -> set[tuple[str, str, str]]:
    """(model, benchmark, problem_id) of every problem whose samples a chunk holds."""
    from segsft.store.parts import chunk_keys

    return chunk_keys(layout.chunks(), SAMPLE_KEY[:3])


def generate_graded(model_cfg: ModelConf, label: str, sets: Sequence[tuple[str, Sequence[ProblemRow]]], k: int,
                    settings: Any, layout: Any, rank: int = 0, world: int = 1,
                    failed: list[tuple[str, str, str]] | None = None) -> int:
    """Generate k samples per problem of this rank's shard (rows r, r+world, ... of each set)
    that no chunk holds yet, grade them, and write them chunk by chunk (atomic files). Returns
    the number of problems generated. The model loads only when there is work. Problems the
    engine gave up on (out of memory even alone) are added to `failed` as (set, id, reason);
    a rerun tries them again."""
    from segsft.method.grading import grade
    from segsft.store.layout import part_name
    from segsft.store.parts import ChunkWriter, part_lock
    from segsft.schemas import GENERATIONS_SCHEMA

    part = part_name(rank, world)
    # One writer per part: a second process on the same shard is refused in one line (naming
    # the holder) instead of writing the same chunks twice.
    with part_lock(layout, part):
        done = done_keys(layout)
        todo = [(name, [p for p in probs[rank::world] if (label, name, p.problem_id) not in done]) for name, probs in sets]
        total = sum(len(t) for _, t in todo)
        log.info("generate %s: %d problems to do (%d already done) x %d samples", label, total,
                 sum(len(p[rank::world]) for _, p in sets) - total, k)
        if not total:
            return 0
        engine = load_engine(model_cfg, settings)
        progress = Progress(total, f"generate {label[-40:]}", disable=rank != 0)
        chunks = ChunkWriter(lambda n: layout.chunk(part, n), len(layout.chunks(part)))
        try:
            for name, probs in todo:
                by_id = {p.problem_id: p for p in probs}
                step = max(1, settings.chunk_problems)
                for lo in range(0, len(probs), step):
                    rows = []
                    for batch in engine.generate(probs[lo:lo + step], k, progress):
                        for c in batch:
                            p = by_id[c.problem_id]
                            g = grade(c.text, p.answer, c.finish_reason, p.choices)
                            rows.append({"model": label, "benchmark": name, "problem_id": c.problem_id, "sample": c.sample,
                                         "output": c.text, "output_tokens": c.tokens, "finish_reason": c.finish_reason,
                                         "answer": p.answer, "pred": g.pred, "correct": g.correct, "verdict": g.verdict})
                    if failed is not None:
                        failed.extend((name, pid, why) for pid, why in getattr(engine, "failed", []))
                    if not rows:
                        continue  # every problem of the chunk was given up: nothing to write
                    chunks.write(rows, GENERATIONS_SCHEMA)
        finally:
            progress.close()
        return total


def read_generations(layout: Any) -> "Any":
    """Every chunk's rows, each (model, benchmark, problem_id, sample) once (a Polars frame)."""
    from segsft.schemas import GENERATIONS_SCHEMA
    from segsft.store.parts import read_chunks

    return read_chunks(layout.chunks(), GENERATIONS_SCHEMA, SAMPLE_KEY)
