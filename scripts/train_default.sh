#!/usr/bin/env bash
# Train promptsam's embedded default model on ../shared/data (2D: MoNuSeg, DSB2018, CoNSeP train splits; the
# frozen validation split is held out) and ship it into src/promptsam/weights/. Resumable: re-run to continue.
#   bash scripts/train_default.sh [RUN_DIR]
# The recipe is the one the shipped model went through (docs/model_card_default.md), in three phases; each phase
# is its own run folder that starts from the previous phase's model.pt, and CPU threads are one per process.
#   1. prompter (50 min) and segmentor at native magnification (75 min), concurrently;
#   2. segmentor at 2x magnification (segmentor.scale=2), 28 min, learning rate 5e-4;
#   3. the same at learning rate 1.5e-4, 80 min, with the prompter continued at learning rate 3e-4 for 35 min
#      alongside (two processes, one run folder).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/env.sh"
py="${PROMPTSAM_VENV:-$root/.venv}/bin"
run="${1:-$root/runs/default}"
data="$root/../shared/data"
common=(--data "$data/monuseg" --data "$data/dsb2018" --data "$data/consep" --preset promptnucseg_cpu
        --threads 1 --set training.samples_per_epoch=128 --no-progress)
train() { OMP_NUM_THREADS=1 "$py/promptsam" train promptnucseg "${common[@]}" "$@"; }
from_previous() {  # start phase folder $2 from phase folder $1's model (once)
    mkdir -p "$2"
    [[ -f "$2/model.pt" ]] || cp "$1/model.pt" "$2/model.pt"
}

p1="$run/phase1"
mkdir -p "$p1"
train --out "$p1" --set training.val_every=5 --stage prompter --max-minutes 50 > "$p1/prompter.log" 2>&1 &
train --out "$p1" --set training.val_every=5 --stage segmentor --max-minutes 75 > "$p1/segmentor.log" 2>&1 &
wait

from_previous "$p1" "$run/phase2"
train --out "$run/phase2" --set training.val_every=4 --set segmentor.scale=2 --stage segmentor --max-minutes 28 \
    > "$run/phase2/segmentor.log" 2>&1

from_previous "$run/phase2" "$run/phase3"
train --out "$run/phase3" --set training.val_every=4 --set segmentor.scale=2 --set segmentor.lr=1.5e-4 \
    --stage segmentor --max-minutes 80 > "$run/phase3/segmentor.log" 2>&1 &
sleep 60  # the segmentor writes the phase's config.yaml first; the prompter adds its learning rate to it
train --out "$run/phase3" --set training.val_every=4 --set prompter.lr=3e-4 --stage prompter --max-minutes 35 \
    > "$run/phase3/prompter.log" 2>&1 &
wait

"$py/python" -m promptsam.pretrained "$run/phase3/model.pt" --name default
