"""train.mixed_precision means what it says: it reaches the Accelerator whatever the launcher asked for
(`accelerate launch --mixed_precision`, the accelerate config), and the stages of one process must agree.

On CPU bf16 autocast is real (it changes the losses), so a launcher's bf16 that leaked into a "no" stage shows
in the losses; fp16 would be silently ignored on CPU, which is why the launcher side here is bf16."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "training_configs" / "tiny"
ENV = {**os.environ, "WANDB_MODE": "disabled"}
for _var in ("ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_CPU", "SLURM_JOB_END_TIME"):
    ENV.pop(_var, None)


def _train(out: Path, cache: Path, precision: str, launcher: str | None) -> subprocess.CompletedProcess:
    """Tiny stage 1 for 2 steps: `python -m aurl.train`, or `accelerate launch --mixed_precision <launcher>`."""
    args = ["-m", "aurl.train", "--config", str(TINY), "--output-dir", str(out), "--stage", "1",
            f"data.cache_dir={cache}", "train.max_steps=2", "eval.enabled=false", "logging.tracker=none",
            "logging.progress_bar=false", f"train.mixed_precision={precision}"]
    if launcher is None:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
               "--mixed_precision", launcher, "--dynamo_backend", "no", *args]
    r = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _losses(out: Path) -> dict[tuple[str, int], float]:
    recs = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    return {(r["split"], r["step"]): r["loss"] for r in recs if r["split"] in ("train", "val")}


def _precision(out: Path) -> str:
    return json.loads((out / "training_state.json").read_text())["stages"]["1"]["mixed_precision"]


@pytest.mark.slow
def test_the_stage_key_wins_over_the_launchers_mixed_precision(tmp_path):
    cache = tmp_path / "cache"
    plain = tmp_path / "plain"
    _train(plain, cache, "no", launcher=None)
    # the launcher asks for bf16, the stage for no: the stage's fp32 run, and a line that says so
    overridden = tmp_path / "launcher_bf16"
    r = _train(overridden, cache, "no", launcher="bf16")
    warning = [line for line in r.stderr.splitlines() if "train.mixed_precision" in line]
    assert len(warning) == 1 and "bf16" in warning[0], r.stderr[-2000:]
    assert _precision(plain) == _precision(overridden) == "no"
    ref, got = _losses(plain), _losses(overridden)
    assert len(ref) == 3 and got == ref  # 2 train steps + 1 validation, bit for bit (one process each)
    # and the other way round: the stage's bf16 under a launcher that says no
    bf16 = tmp_path / "stage_bf16"
    _train(bf16, cache, "bf16", launcher="no")
    assert _precision(bf16) == "bf16"
    assert _losses(bf16).keys() == ref.keys() and _losses(bf16) != ref


def test_stages_of_one_process_must_agree(tmp_path, capsys):
    from aurl.train.__main__ import main

    out = tmp_path / "run"
    rc = main(["--config", str(TINY), "--output-dir", str(out), "stage2.train.mixed_precision=bf16"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "train.mixed_precision" in err and "stage 1: no" in err and "stage 2: bf16" in err and "--stage" in err
    assert not out.exists()
    # one stage per launch is fine: the check covers the stages this process trains
    assert main(["--config", str(TINY), "--output-dir", str(out), "--stage", "1", "train.max_steps=1",
                 "eval.enabled=false", "logging.tracker=none", f"data.cache_dir={tmp_path / 'cache'}",
                 "stage2.train.mixed_precision=bf16"]) == 0
