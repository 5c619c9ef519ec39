#!/usr/bin/env bash
# Replays every candidate from what bench/study_cpu.sh has cached so far and writes the
# committed tables (one file per machine, dtype and trace set, never mixed):
#   bench/results/convergence_study_cpu_fp32_bound.json   the cut traces
#   bench/results/convergence_study_cpu_fp32_whole.json   the whole traces
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
$PY bench/convergence_study.py analyze --tag cpu-fp32 --traces 16 --adaptive-max 256 --per-round 1 \
  --out bench/results/convergence_study_cpu_fp32_bound.json
$PY bench/convergence_study.py analyze --tag cpu-fp32-whole --whole --max-tokens 5300 --traces 8 --adaptive-max 256 \
  --per-round 1 --out bench/results/convergence_study_cpu_fp32_whole.json
