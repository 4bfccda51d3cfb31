#!/usr/bin/env bash
# The full test suite on a fresh or existing machine: set up .venv (idempotent), then pytest.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -k vocab -x`).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/launch/env.sh"
cd "$repo_root"
exec python -m pytest "$@"
