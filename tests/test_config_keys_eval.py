"""Probes of the eval: the stage-end evaluation's report.

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from config_probes import (
    EVAL,
    Run,
    keys_of,
    probe,
    rejects,
    run_probe,
)


def samples(run: Run) -> list[bytes]:
    return [Path(f).read_bytes() for f in run.eval_json()["samples"]["files"]]


@probe("eval.enabled")
def _(lab, key):
    assert not (lab.base().out / "eval").exists()
    r = lab.run(*EVAL)
    assert r.eval_json()["stage"] == 1
    rejects(key, 1)


# one run changes three eval keys at once: each acts on its own part of the report
EVAL_CHANGED = (*EVAL, "eval.num_samples=3", "eval.length=16", "eval.max_val_tokens=300")


@probe("eval.num_samples")
def _(lab, key):
    base, r = lab.run(*EVAL), lab.run(*EVAL_CHANGED)
    assert base.eval_json()["samples"]["num"] == 2 and r.eval_json()["samples"]["num"] == 3
    assert len(list((r.out / "eval" / "stage1").glob("sample_*.mid"))) == 3
    rejects(key, -1)


@probe("eval.length")
def _(lab, key):
    base, r = lab.run(*EVAL), lab.run(*EVAL_CHANGED)
    assert base.eval_json()["samples"]["generated_tokens"] == 2 * 32
    assert r.eval_json()["samples"]["generated_tokens"] == 3 * 16
    rejects(key, 0)


@probe("eval.max_val_tokens")
def _(lab, key):
    base, r = lab.run(*EVAL), lab.run(*EVAL_CHANGED)
    assert base.eval_json()["validation"]["tokens"] > 1000
    assert 300 <= r.eval_json()["validation"]["tokens"] < 300 + 64
    rejects(key, -1)


@probe("eval.temperature")
def _(lab, key):
    assert samples(lab.run(*EVAL, f"{key}=0.3")) != samples(lab.run(*EVAL))
    rejects(key, -1.0)


@probe("eval.top_p")
def _(lab, key):
    assert samples(lab.run(*EVAL, f"{key}=0.2")) != samples(lab.run(*EVAL))
    rejects(key, 0.0)


@pytest.mark.parametrize("key", keys_of("eval"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
