"""Probes of the train: real runs of the tiny stage 1 (length, seed, precision, early stop, validation, the SLURM stop).

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from config_probes import (
    Run,
    keys_of,
    probe,
    rejects,
    run_probe,
)

from aurl.train.preemption import STOPPED_EXIT


@probe("train.epochs")
def _(lab, key):
    one, two = lab.run("train.max_steps=0", f"{key}=1"), lab.run("train.max_steps=0", f"{key}=2")
    assert (one.state["step"], two.state["step"]) == (3, 6)
    assert (one.state["epoch"], two.state["epoch"]) == (1, 2)
    rejects(key, 0)


@probe("train.max_steps")
def _(lab, key):
    r = lab.run(f"{key}=2")
    assert lab.base().state["step"] == 4 and r.state["step"] == 2 and r.state["total_steps"] == 2
    rejects(key, -1)


@probe("train.seed")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=1")
    assert r.train()[1] != base.train()[1] and r.val() != base.val()
    assert r.state["seed"] == 1
    rejects(key, 1.5)


@probe("train.mixed_precision")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=bf16")
    assert r.rc == 0 and r.train()[1] != base.train()[1]
    rejects(key, "fp16")


@probe("train.patience")
def _(lab, key):
    # a learning rate far too high and no clipping: the validation loss soon stops improving. Measured
    # 2026-12-02 at lr 100, a validation every step: 135958, 19655, 16641, 27075, 16960, 14432 (no new best at
    # steps 4 and 5). The first step without a new best lies inside an epoch (3 steps each), so the stop there
    # is committed by the early stop itself, not by an epoch end.
    noisy = ("optim.lr=100", "optim.grad_clip=0", "optim.warmup_steps=0", "train.val_every_steps=1",
             "train.max_steps=0")
    never, one = lab.run(*noisy), lab.run(*noisy, f"{key}=1")
    vals = never.val()
    no_new_best = [s for s in sorted(vals) if s > 1 and vals[s] >= min(vals[t] for t in vals if t < s)]
    assert never.state["step"] == 6 and len(vals) == 6 and no_new_best, vals
    # the count of validations since the last new best restarts at each new best (here the last, at step 6)
    assert no_new_best[-1] < 6, vals
    meta = json.loads((Path(never.state["last_checkpoint"]) / "meta.json").read_text())
    assert meta["step"] == 6 and meta["bad_evals"] == 0 and meta["early_stopped"] is False, meta
    stop = no_new_best[0]
    assert stop % 3, (stop, vals)  # mid-epoch, as measured (4)
    assert one.rc == 0 and one.state["status"] == "completed" and one.state["step"] == stop
    assert one.checkpoints()[-1] == stop and Path(one.state["last_checkpoint"]).name == f"step_{stop:08d}"
    meta = json.loads((Path(one.state["last_checkpoint"]) / "meta.json").read_text())
    assert meta["early_stopped"] is True and meta["reason"] == "early_stop", meta
    # the best model is the best validation's (step 3), not the last one's (the stop's, worse)
    best_step = min((s for s in vals if s <= stop), key=vals.get)
    assert best_step < stop and one.state["best_val_loss"] == vals[best_step]
    for sidecar in ("stage1/best.json", "best_model.json"):
        info = json.loads((one.out / "checkpoints" / sidecar).read_text())
        assert (info["extra"]["step"], info["metrics"]["nll"]) == (best_step, vals[best_step]), (sidecar, info)
    rejects(key, -1)


@probe("train.val_every_steps")
def _(lab, key):
    assert sorted(lab.base().val()) == [3, 4]  # epoch ends only
    assert sorted(lab.run(f"{key}=1").val()) == [1, 2, 3, 4]
    rejects(key, -1)


@probe("train.max_val_batches")
def _(lab, key):
    base, one = lab.base(), lab.run(f"{key}=1")  # the tiny config validates on 2 batches
    assert one.val()[3] != base.val()[3]
    assert one.train() == base.train()  # validation does not touch training
    rejects(key, -1)


@probe("train.stop_margin_s")
def _(lab, key):
    env = {"SLURM_JOB_END_TIME": lab.slurm_end}  # the job ends in an hour
    calm, urgent = lab.run(f"{key}=0", env=env), lab.run(f"{key}=7200", env=env)
    assert calm.rc == 0 and calm.state["status"] == "completed" and calm.state["step"] == 4
    assert urgent.rc == STOPPED_EXIT == 75
    assert urgent.state["status"] == "stopped" and urgent.state["step"] < 4 and urgent.checkpoints()
    # every step an epoch's last (6 micro-batches an epoch, grad_accum 6): the stop comes with the epoch end,
    # whose commit is the stop's; no step runs after it
    one_step_epochs = ("optim.grad_accum=6", "train.max_steps=0")
    calm, urgent = lab.run(*one_step_epochs, f"{key}=0", env=env), lab.run(*one_step_epochs, f"{key}=7200", env=env)
    assert calm.rc == 0 and calm.state["total_steps"] == 2 and calm.checkpoints() == [1, 2]
    assert urgent.rc == STOPPED_EXIT and urgent.state["status"] == "stopped" and urgent.state["step"] == 1
    assert urgent.checkpoints() == [1] and (urgent.state["epoch"], urgent.state["batch"]) == (1, 0)
    rejects(key, -1.0)


@pytest.mark.parametrize("key", keys_of("train"))
def test_key_is_used(key, lab):
    run_probe(key, lab)


def step_weights(run: Run, step: int) -> dict[str, torch.Tensor]:
    """The model weights of run's committed checkpoint at `step` (accelerate's model.safetensors)."""
    from safetensors.torch import load_file

    return load_file(str(run.out / "checkpoints" / "stage1" / f"step_{step:08d}" / "model.safetensors"))


@probe("train.compile")
def _(lab, key):
    """The real trainer compiles the model (dynamo's graph counter moves), trains, and commits checkpoints with
    the eager model's keys (nn.Module.compile in place: no `_orig_mod.`). The slowest probe (inductor
    compiles the forward, backward and validation graphs: minutes on a loaded 2-core machine, cached by torch
    across runs); it is the one end-to-end run of train.compile."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # no dropout: compiled dropout draws its masks from inductor's own generator, not the eager stream
    same = ("train.max_steps=1", "model.dropout=0")
    r, eager = lab.run(f"{key}=true", *same), lab.run(*same)
    assert r.rc == 0 and r.state["step"] == 1, r.stderr[-2000:]
    assert counters["stats"]["unique_graphs"] >= 1
    keys = sorted(step_weights(eager, 1))
    assert sorted(step_weights(r, 1)) == keys and len(keys) > 10
    # the same function: the first loss as the eager run's up to the compiled kernels' rounding (the bound of
    # tests/test_distributed.py::test_compile_in_place_keeps_the_state_dict)
    assert abs(r.train()[1] - eager.train()[1]) < 1e-4, (r.train()[1], eager.train()[1])
    rejects(key, "yes")


@probe("train.activation_checkpointing")
def _(lab, key):
    """Through the real trainer: the bytes the autograd graph keeps for backward passes over a 1-step run
    (validation runs without grad), at most half with the key on (tests/test_speed.py measures 0.10x for a
    small transformer; the tiny stage 1 kept 5.2 MB without it)."""
    kept = {}
    for on in ("false", "true"):
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            r = lab.run(f"{key}={on}", "train.max_steps=1")
        assert r.rc == 0
        kept[on] = sum(sizes)
    assert 0 < kept["true"] <= 0.5 * kept["false"], kept
    rejects(key, 1)
