"""Probes of the logging: the trackers' files, the progress bar, W&B.

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

# one run changes three logging keys: each acts on its own output
LOGGING_CHANGED = ("logging.tracker=tensorboard", "logging.log_every_steps=3", "logging.progress_bar=true")


@probe("logging.tracker")
def _(lab, key):
    assert not (lab.base().out / "logs" / "tensorboard").exists()
    r = lab.run(*LOGGING_CHANGED)
    assert list((r.out / "logs" / "tensorboard" / "stage1").glob("events.out.tfevents.*"))
    rejects(key, "mlflow")


@probe("logging.log_every_steps")
def _(lab, key):
    assert sorted(lab.base().train()) == [1, 2, 3, 4]
    assert sorted(lab.run(*LOGGING_CHANGED).train()) == [1, 3]  # the first step is always logged
    rejects(key, 0)


@probe("logging.progress_bar")
def _(lab, key):
    base, r = lab.base(), lab.run(*LOGGING_CHANGED)
    assert "stage 1" not in base.stderr
    assert "stage 1: 100%" in r.stderr and "4/4" in r.stderr and "loss=" in r.stderr
    rejects(key, "yes")


@probe("logging.wandb_project")
def _(lab, key):
    pytest.importorskip("wandb")
    wandb_home = lab.fresh_dir("wandb_home")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_API_KEY": None,
           **{v: str(wandb_home / v.lower()) for v in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}}
    r = lab.run("logging.tracker=wandb", f"{key}=aurl-probe-project", env=env)
    assert r.rc == 0
    runs = list((r.out / "logs" / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run written"
    blobs = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"aurl-probe-project" in blobs
    rejects(key, 1)


@pytest.mark.parametrize("key", keys_of("logging"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
