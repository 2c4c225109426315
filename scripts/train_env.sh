# Sourced by the training scripts: the repo root, the environment (created or reused), its bin folder, the data.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/env.sh"
py="${PROMPTSAM_VENV:-$root/.venv}/bin"
data="$root/../shared/data"
