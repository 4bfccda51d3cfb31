#!/usr/bin/env bash
# The full test suite on a fresh or existing machine: set up .venv (idempotent), then pytest.
# Extra arguments go to pytest (e.g. `bash launch/test.sh -k vocab -x`).
# Two xdist workers (AURL_TEST_WORKERS; 0 = one process): a test module runs whole on one worker, the longest
# modules first (tests/conftest.py); on 2 cores much of a serial run leaves one core idle (single-threaded
# tests, SLURM's scheduler ticks, process start-up), and the suite's time is what CI waits for.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$repo_root/launch/env.sh"
cd "$repo_root"
exec python -m pytest -n "${AURL_TEST_WORKERS:-2}" --dist loadgroup --no-loadscope-reorder "$@"
