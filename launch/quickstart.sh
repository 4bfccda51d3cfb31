#!/usr/bin/env bash
# The main job on the embedded default: set up .venv (idempotent), then run the three-stage pipeline on the bundled Bach corpus,
# CPU-sized. Extra arguments go to the command (e.g. `bash launch/quickstart.sh --output-dir /tmp/run`).
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/launch/env.sh"
cd "$repo_root"
exec python -m aurl.train "$@"
