#!/usr/bin/env bash
# Create or reuse ./.venv and install promptsam (with the test extra) into it.
# Re-installs only when pyproject.toml or constraints.txt changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${PROMPTSAM_VENV:-$root/.venv}"
py="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
    echo "promptsam: creating virtual environment $venv" >&2
    "$py" -m venv "$venv"
fi
stamp="$venv/.promptsam-installed"
want="$(cat "$root/pyproject.toml" "$root/constraints.txt" | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$venv/bin/python" -c "import promptsam" 2>/dev/null; then
    echo "promptsam: installing dependencies into $venv (first run takes a few minutes)" >&2
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$root[test]" >&2
    echo "$want" > "$stamp"
fi
