#!/usr/bin/env bash
# Train the CPU-sized M-SAM of docs/benchmarks.md ("v8") on ../shared/data's 3D volumes; resumable: re-run to continue.
#   bash scripts/train_msam_cpu.sh [RUN_DIR]
# Two stages, each its own run folder, one CPU thread per process:
#   1. the lesion detector of the automatic mode (15 min; the shipped benchmarks' detector is v1's, trained this way);
#   2. M-SAM from scratch with the msam_cpu preset (augmented regions, painted clicks, the stride-4 detail branch),
#      55 min (~1,000 steps), taking the detector of stage 1 (`--detector-from`).
# Then the benchmark (Dice after 1-10 simulated clicks and in automatic mode, beside the detector and the floor).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/train_env.sh"  # root, py, data
run="${1:-$root/runs/msam_cpu}"
train() { OMP_NUM_THREADS=1 "$py/promptsam" train msam --data "$data/ms_lesion_3d" --data "$data/brats2021_edema_3d" \
    --preset msam_cpu --threads 1 --no-progress "$@"; }

mkdir -p "$run/detector" "$run/msam"
[[ -f "$run/detector/model.pt" ]] || train --out "$run/detector" --stage detector --max-minutes 15 \
    > "$run/detector/train.log" 2>&1
train --out "$run/msam" --stage segmentor --max-minutes 55 --detector-from "$run/detector/model.pt" \
    > "$run/msam/train.log" 2>&1
OMP_NUM_THREADS=1 "$py/python" "$root/benchmarks/msam_benchmark.py" --model "$run/msam/model.pt" --threads 1 \
    --no-speed --results msam_benchmark_mine
