#!/usr/bin/env bash
# The convergence study on this CPU, in the background, resumable across sessions (the point
# cache under bench/cache/convergence keeps every evaluation and is committed, since a home
# directory does not outlive a session; a rerun computes only what is missing). Two lanes, one thread each, nice'd so interactive work keeps priority:
#   cut   : the 16 cut traces (200-400 tokens), adaptive to 256 points, then the points of
#           attribute.refine_on=decisions (to 512, then 1024, where 256 leaves a trace unconverged),
#           then uniform grids to 257 and 1025
#   whole : the whole traces of <= 5,300 SmolLM2 tokens (8 traces, 5-28 segments), no cut,
#           the default's points (refine_on=decisions) with each pass
# Each lane widens in passes, so whatever is cached when a session ends is balanced over
# the traces. Analyze with bench/study_analyze.sh (it reads only what is cached).
#   nohup bash bench/study_cpu.sh cut   > bench/cache/study-cut.log 2>&1 &
#   nohup bash bench/study_cpu.sh whole > bench/cache/study-whole.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
UNSETTLED=aime24-004,aime24-006,aime24-010,aime24-021,aime24-025
AT_CAP=aime24-021,aime24-025,aime24-029
s="nice -n 10 $PY bench/convergence_study.py compute --baselines pad --no-fixed --per-round 1 --batch 1"
case "${1:?cut or whole}" in
  cut)
    $s --tag cpu-fp32 --traces 16 --adaptive-max 128 --levels 7 --no-focus
    # The traces whose two references disagreed at 129 points first: what decides the margins.
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --levels 8 --no-focus --ids $UNSETTLED
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --levels 9 --no-focus --ids $UNSETTLED
    # attribute.refine_on=decisions (default targets and 4x tighter) before the wider grids:
    # what decides where the default's points go.
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --levels 7
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --levels 8
    # The traces max_steps=256 leaves unconverged (the default was 256 until 2026-12-04): does a larger budget settle
    # their flags (the default-max512 row)?
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --focus-max 512 --levels 2 --ids $AT_CAP
    # ... and to 1024 (the default-max1024 row: is the 5% target reachable by budget without an
    # overclaim?), the 4x tighter run's points only where the default converges.
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --focus-max 1024 --focus-tight converged --levels 2 --ids $AT_CAP
    # The stricter check's run (4x tighter, twice the evaluations) where the default converges,
    # to 512 (the 512 and 1,024 rows count a converged trace without it as unchecked).
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --focus-max 512 --focus-tight converged --levels 2
    # 1,025-point references, first where the default leaves flags (what settles them is measured
    # there), the one with only a 257-point reference first.
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --levels 10 --ids aime24-029,aime24-025,aime24-021
    $s --tag cpu-fp32 --traces 16 --adaptive-max 256 --levels 10 ;;
  whole)
    w="--tag cpu-fp32-whole --whole --max-tokens 5300 --traces 8"
    # The default's points (attribute.refine_on=decisions) on the traces that have pass 1 first.
    $s $w --adaptive-max 64 --levels 6 --ids aime24-024,aime24-009,aime24-000,aime24-019,aime24-008
    $s $w --adaptive-max 64 --levels 6
    # The default's points on to 128 where 64 leaves a trace unconverged (aime24-009 has them):
    # does a larger budget converge a whole trace, and what does it settle?
    $s $w --adaptive-max 64 --focus-max 128 --focus-tight converged --levels 6
    $s $w --adaptive-max 128 --levels 7 --no-focus
    $s $w --adaptive-max 256 --levels 8 ;;
esac
