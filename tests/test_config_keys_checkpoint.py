"""Probes of the checkpoint: the committed checkpoints a real run leaves.

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

import pytest
from config_probes import (
    keys_of,
    probe,
    rejects,
    run_probe,
)


@probe("checkpoint.every_steps")
def _(lab, key):
    assert lab.run("checkpoint.keep=3").checkpoints() == [3, 4]  # epoch end and the last step
    assert lab.run("checkpoint.keep=3", f"{key}=1").checkpoints() == [2, 3, 4]
    rejects(key, -1)


@probe("checkpoint.keep")
def _(lab, key):
    assert lab.run("checkpoint.every_steps=1").checkpoints() == [3, 4]
    assert lab.run("checkpoint.every_steps=1", f"{key}=3").checkpoints() == [2, 3, 4]
    rejects(key, 1)


@pytest.mark.parametrize("key", keys_of("checkpoint"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
