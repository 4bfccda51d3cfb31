"""Shared pytest helpers.

`unavailable(reason)`: a component a test needs cannot start (SLURM, munge, the DeepSpeed op build). Under
CI=true (CI sets it) the test fails with the reason, so CI cannot go green without the component; elsewhere
(a laptop without root, say) it is skipped with the reason.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str):
    """Fail (under CI=true) or skip (elsewhere) the current test, naming why the component is unavailable."""
    if in_ci():
        pytest.fail(f"CI=true, and {reason}", pytrace=False)
    pytest.skip(reason)
