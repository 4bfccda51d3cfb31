"""Probes of the eval: the stage-end evaluation's report.

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

import re
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

from aurl.config import build_config
from aurl.console import UserError


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


# one run changes three more keys at once, each acting on its own part of the report
EVAL_OPTIONS = (*EVAL, "eval.top_k=20", "eval.max_data_excerpts=3", "eval.pictures=false")


@probe("eval.top_k")
def _(lab, key):
    assert samples(lab.run(*EVAL_OPTIONS)) != samples(lab.run(*EVAL))  # the other two keys leave samples be
    rejects(key, -1)


@probe("eval.max_data_excerpts")
def _(lab, key):
    assert lab.run(*EVAL).eval_json()["data_excerpts"] > 3
    assert lab.run(*EVAL_OPTIONS).eval_json()["data_excerpts"] == 3
    rejects(key, -1)


@probe("eval.pictures")
def _(lab, key):
    assert lab.run(*EVAL).eval_json()["pictures"]
    r = lab.run(*EVAL_OPTIONS)
    assert r.eval_json()["pictures"] == [] and not list((r.out / "eval").rglob("*.png"))
    rejects(key, 1)


@probe("eval.grammar")
def _(lab, key):
    def errors(run: Run) -> int:
        return sum(run.eval_json()["samples"]["grammar_errors"].values())

    assert errors(lab.run(*EVAL)) == 0  # grammar-constrained decoding
    assert errors(lab.run(*EVAL, f"{key}=false")) > 0  # the raw distribution of a 4-step model
    rejects(key, 1)


# EvalConfig's options that only the evaluate CLI sets: a stage YAML refuses them, naming the key
@probe("eval.seed", "eval.batch_size", "eval.audio")
def _(lab, key):
    value = {"eval.seed": 1, "eval.batch_size": 4, "eval.audio": False}[key]
    with pytest.raises(UserError, match=re.escape(key) + " is not a stage setting"):
        build_config({"eval": {key.split(".")[1]: value}})


@pytest.mark.parametrize("key", keys_of("eval"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
