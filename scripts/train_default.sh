#!/usr/bin/env bash
# Train promptsam's embedded default model on ../shared/data (2D: MoNuSeg, DSB2018, CoNSeP train splits; the
# frozen validation split is held out) and ship it into src/promptsam/weights/. Resumable: re-run to continue.
#   bash scripts/train_default.sh [RUN_DIR] [PROMPTER_MINUTES] [SEGMENTOR_MINUTES]
# The two stages train concurrently, one CPU thread each, as in the recorded run (docs/model_card_default.md).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/env.sh"
py="${PROMPTSAM_VENV:-$root/.venv}/bin"
run="${1:-$root/runs/default_v1}"
data="$root/../shared/data"
common=(--data "$data/monuseg" --data "$data/dsb2018" --data "$data/consep" --preset promptnucseg_cpu
        --out "$run" --threads 1 --set training.samples_per_epoch=128 --set training.val_every=5 --no-progress)
mkdir -p "$run"
OMP_NUM_THREADS=1 "$py/promptsam" train promptnucseg "${common[@]}" --stage prompter --max-minutes "${2:-20}" \
    > "$run/prompter.log" 2>&1 &
OMP_NUM_THREADS=1 "$py/promptsam" train promptnucseg "${common[@]}" --stage segmentor --max-minutes "${3:-40}" \
    > "$run/segmentor.log" 2>&1 &
wait
"$py/python" -m promptsam.pretrained "$run/model.pt" --name default
