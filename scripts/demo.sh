#!/usr/bin/env bash
# Set up (or reuse) the environment, then run promptsam's main job on a real sample image.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/env.sh"
cd "$root"
exec "${PROMPTSAM_VENV:-$root/.venv}/bin/promptsam" demo -o "${1:-out/demo}"
