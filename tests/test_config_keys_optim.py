"""Probes of the optim: the learning rate the loop set (logged at every step) and the losses after the updates.

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

import pytest
from config_probes import (
    Run,
    assert_differs_after_first_step,
    keys_of,
    probe,
    rejects,
    run_probe,
)

from aurl.train.schedule import lr_at


def lrs(run: Run) -> dict[int, float]:
    return run.train("lr")


def expected_lrs(lr: float, warmup: int, min_ratio: float, total: int = 4) -> dict[int, float]:
    """The lr logged at step s was set for optimizer step s - 1."""
    return {s: pytest.approx(lr_at(s - 1, lr, warmup, total, min_ratio)) for s in range(1, total + 1)}


@probe("optim.lr")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=0.002")
    assert lrs(base) == expected_lrs(1e-3, 2, 0.1) and lrs(r) == expected_lrs(2e-3, 2, 0.1)
    assert_differs_after_first_step(base.train(), r.train())
    rejects(key, 0)


@probe("optim.min_lr_ratio")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=0.5")
    assert lrs(r) == expected_lrs(1e-3, 2, 0.5) and lrs(r)[4] != lrs(base)[4]
    rejects(key, 1.5)


@probe("optim.warmup_steps")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=0")
    assert lrs(base)[1] == pytest.approx(0.5e-3) and lrs(r)[1] == pytest.approx(1e-3)
    assert lrs(r) == expected_lrs(1e-3, 0, 0.1)
    rejects(key, -1)


@probe("optim.weight_decay")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.5").train())
    rejects(key, -0.1)


@probe("optim.beta1")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.5").train())
    rejects(key, 1.0)


@probe("optim.beta2")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.5").train())
    rejects(key, 1.0)


@probe("optim.grad_clip")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.01").train())
    rejects(key, -1.0)


@probe("optim.grad_accum")
def _(lab, key):
    one_epoch = ("train.max_steps=0", "train.epochs=1")
    two, one = lab.run(*one_epoch), lab.run(*one_epoch, f"{key}=1")
    assert two.state["step"] == 3 and one.state["step"] >= 6  # the same windows in twice the steps
    rejects(key, 0)


@probe("optim.disc_lr")
def _(lab, key):
    gan = ("model.mode=vae_gan", "train.max_steps=2")
    a, b = lab.run(*gan).train("d/loss"), lab.run(*gan, f"{key}=0.01").train("d/loss")
    assert_differs_after_first_step(a, b)
    rejects(key, 0.0)


@pytest.mark.parametrize("key", keys_of("optim"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
