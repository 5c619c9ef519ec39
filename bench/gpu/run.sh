#!/usr/bin/env bash
# On the GPU machine (device tool, run with carry [".whl", ".gpudata"], timeout_s 540):
#   bash bench/gpu/run.sh
# Prepare here first: bash bench/gpu/prepare.sh. About 6 minutes on one H100 (plus about a minute for
# bench/vllm_ranks.py where vLLM is installed); results go to
# $OUT (the device tool brings them back) or bench/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
export SEGSFT_TRACES=$PWD/.gpudata/r1-distill-qwen-7b-aime24.jsonl
out=${OUT:-bench/results}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
b=bench/attribute_gpu.py
# 1.5B: engine vs reference at equal rule and steps (linspace 16), 4k/8k/16k.
python3 $b --lengths 4096,8192,16384 --traces 2 --steps 16 --out "$out/attribute_gpu_1_5b.json"
# The engine at the default rule (gauss_legendre 16), and compiled, at 8k.
python3 $b --lengths 8192 --traces 2 --steps 16 --rule gauss_legendre --methods engine --out "$out/attribute_gpu_1_5b_default.json"
python3 $b --lengths 8192 --traces 2 --steps 16 --rule gauss_legendre --methods engine --compile --out "$out/attribute_gpu_1_5b_compile.json"
# Memory: the 1.5B at 32k, the 7B at 8k and 16k (engine, few steps).
python3 $b --lengths 32768 --traces 1 --steps 4 --methods engine --out "$out/attribute_gpu_1_5b_32k.json"
python3 $b --arch bench/configs/r1_distill_qwen_7b.json --lengths 8192,16384 --traces 1 --steps 4 --methods engine \
  --out "$out/attribute_gpu_7b.json"
# Generation (stage=evaluate / generate): HF batched vs one at a time, and vLLM where the image has it,
# on the 1.5B architecture with random bf16 weights.
python3 bench/generate_bench.py --arch bench/configs/r1_distill_qwen_1_5b.json --engines hf,vllm --problems 64 \
  --max-new-tokens 256 --batch 64 --out "$out/generate_gpu_1_5b.json" \
  || python3 bench/generate_bench.py --arch bench/configs/r1_distill_qwen_1_5b.json --engines hf --problems 64 \
  --max-new-tokens 256 --batch 64 --out "$out/generate_gpu_1_5b.json"
# Each rank's vLLM engine on its own GPU (bench/vllm_ranks.py, which the gpu tests of tests/test_vllm_devices.py
# run too): two ranks as torchrun starts them. On one GPU: rank 0 on it, and LOCAL_RANK=1 refused in one line.
# The engine part only where the image has vLLM; the device choice is checked either way. Last, and not fatal,
# so a failing check keeps the results above.
if python3 -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("vllm") is None)'; then engine=""
else engine="--no-engine"; echo "vllm_ranks: vLLM absent, the engine part is skipped"; fi
python3 bench/vllm_ranks.py --ranks 2 $engine --out "$out/vllm_ranks.json" \
  || echo "vllm_ranks: a check failed (see $out/vllm_ranks.json)"
