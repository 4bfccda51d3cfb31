#!/usr/bin/env bash
# Create or reuse the project virtual environment (.venv) and install aurl into it, idempotently.
# Sourced by launch/quickstart.sh and launch/test.sh; safe to run again: it reinstalls only when
# pyproject.toml changed. AURL_VENV overrides the location.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${AURL_VENV:-$repo_root/.venv}"
python_bin="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ]; then
    echo "[aurl] creating virtual environment in $venv"
    "$python_bin" -m venv "$venv"
fi

stamp="$venv/.aurl-install-stamp"
want="$(sha256sum "$repo_root/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "[aurl] installing aurl and its dependencies into $venv"
    # torch first, pinned to the CPU wheel: an open range would pull a multi-GB CUDA build.
    # On a GPU machine, install the torch build you want first; the range in pyproject keeps it.
    if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "torch==${AURL_TORCH_VERSION:-2.13.0}"
    fi
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$repo_root[dev,deepspeed,wandb,bench]"
    echo "$want" > "$stamp"
fi

export PATH="$venv/bin:$PATH"
