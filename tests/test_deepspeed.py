"""DeepSpeed ZeRO-2 and ZeRO-3 through the trainer, for real: `accelerate launch --config_file
accelerate_configs/deepspeed_zero{2,3}.yaml` with 2 CPU processes (gloo) on the tiny configs.

The shipped configs are the GPU ones; on CPU the test only adds `--mixed_precision no` (CPU bf16 is not what
they are for). The first DeepSpeed start JIT-compiles one op (1-2 min on a fresh machine), cached in
$TORCH_EXTENSIONS_DIR (default ~/.cache/torch_extensions), so it is paid once per machine.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from run_helpers import REPO, TINY, alive, kill9_tree, read_state, stage_entry, step_losses

# 2 micro-batches of 2 per step, 6 steps per stage, a commit after every step: room to kill mid-stage
SMALL = ["data.batch_size=2", "checkpoint.every_steps=1", "eval.enabled=false"]
ENV = {k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "AURL_ACCELERATE_CONFIG")}
ENV.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1",
           TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR",
                                               str(Path.home() / ".cache" / "torch_extensions")))

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != "linux", reason="2-process launches with /proc-based kill"),
              pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU recipe; GPUs run the same configs")]


def ds_cmd(zero: str, out: Path, *extra: str, processes: int = 2) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "accelerate_configs" / f"deepspeed_{zero}.yaml"), "--num_processes", str(processes),
            "--mixed_precision", "no", "-m", "aurl.train", "--config", str(TINY), "--output-dir", str(out),
            *SMALL, *extra]


def launch(zero: str, out: Path, *extra: str, processes: int = 2, check: bool = True):
    r = subprocess.run(ds_cmd(zero, out, *extra, processes=processes), cwd=REPO, env=ENV, capture_output=True,
                       text=True, timeout=400)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def kill9_when(zero: str, out: Path, pred, *extra: str) -> None:
    """Launch, wait for pred(), then SIGKILL the launcher and every process it started, all at once."""
    proc = subprocess.Popen(ds_cmd(zero, out, *extra), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    end, hit = time.time() + 300, False
    while time.time() < end and proc.poll() is None:
        if pred():
            hit = True
            break
        time.sleep(0.01)
    tree = kill9_tree(proc.pid)
    proc.wait()
    end = time.time() + 20
    while time.time() < end and any(alive(p) for p in tree):  # nothing of the killed run may go on
        time.sleep(0.05)
    assert not any(alive(p) for p in tree), [p for p in tree if alive(p)]
    assert hit, f"the run ended (rc {proc.returncode}) before the moment to kill it"


def assert_close_losses(ref: dict, got: dict, stages=(1, 2, 3)) -> None:
    ref = {k: v for k, v in ref.items() if k[0] in stages}
    got = {k: v for k, v in got.items() if k[0] in stages}
    assert ref.keys() == got.keys()
    for k in ref:  # ZeRO-2 and ZeRO-3 reduce in other orders: float tolerance, not bit equality
        assert abs(ref[k] - got[k]) < 2e-3, (k, ref[k], got[k])


def resumed_from(log: str, stage: int) -> str:
    """The committed checkpoint a rerun resumed from (the recorded one, or a newer one committed just before
    the kill)."""
    found = re.findall(rf"\[stage {stage}\] resuming from (\S+) \(epoch", log)
    assert len(found) == 1, log[-3000:]
    return Path(found[0]).name


def generate_from(export: Path, tmp: Path) -> Path:
    out = tmp / "gen"
    r = subprocess.run([sys.executable, "-m", "aurl.generate", "--checkpoint", str(export), "--num", "1",
                        "--length", "32", "--out", str(out)], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    mids = list(out.glob("*.mid"))
    assert len(mids) == 1 and mids[0].stat().st_size > 0
    return mids[0]


@pytest.fixture(scope="module")
def zero2_reference(tmp_path_factory) -> Path:
    """The uninterrupted three-stage run under ZeRO-2 (also pays the one-time op build)."""
    out = tmp_path_factory.mktemp("zero2_ref")
    launch("zero2", out)
    return out


def test_zero2_three_stages_and_plain_export(zero2_reference, tmp_path):
    state = read_state(zero2_reference)
    for s in "123":
        e = state["stages"][s]
        assert e["status"] == "completed" and e["zero_stage"] == 2 and e["world_size"] == 2
        assert e["step"] == 6 and e["best_val_loss"] is not None
    ckpt = Path(state["stages"]["3"]["last_checkpoint"])
    assert (ckpt / "meta.json").is_file() and (ckpt / "extra_state.pt").is_file()  # D + its optimizer
    assert (ckpt / "random_states_0.pkl").is_file() and (ckpt / "random_states_1.pkl").is_file()
    best = torch.load(zero2_reference / "checkpoints" / "best_model.pt", map_location="cpu", weights_only=True)
    assert best["config"]["mode"] == "vae_gan"
    keys = best["model_state"].keys()
    assert any(k.startswith("disc.") for k in keys) and any(k.startswith("decoder.") for k in keys)
    assert all(v.dtype == torch.float32 for v in best["model_state"].values() if v.is_floating_point())
    generate_from(zero2_reference / "checkpoints" / "best_model.pt", tmp_path)


def test_zero2_kill9_mid_stage_refuses_other_world_size_then_resumes(zero2_reference, tmp_path):
    out = tmp_path / "run"
    kill9_when("zero2", out, lambda: stage_entry(out, 1).get("last_checkpoint") is not None
               and stage_entry(out, 1).get("status") == "running", "--stage", "1")
    recorded = stage_entry(out, 1)["last_checkpoint"]
    assert stage_entry(out, 1)["step"] < 6
    r = launch("zero2", out, "--stage", "1", processes=1, check=False)
    err = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode != 0 and len(err) == 1, r.stderr[-3000:]
    assert "world_size: recorded 2, now 1" in err[0] and "--num_processes 2" in err[0]
    assert "zero_to_fp32.py" in err[0]
    r = launch("zero2", out, "--stage", "1")
    assert resumed_from(r.stdout + r.stderr, 1) >= Path(recorded).name
    assert stage_entry(out, 1)["status"] == "completed"
    ref = {k: v for k, v in step_losses(zero2_reference).items() if k[0] == 1}
    assert step_losses(out) == ref  # the same ZeRO stage and processes: the resume is exact


def test_zero3_kill9_in_the_gan_stage_resumes_and_exports(zero2_reference, tmp_path):
    """ZeRO-3 over all three stages, killed mid stage 3 (two optimizers: G in the engine, D outside it)."""
    out = tmp_path / "run"
    kill9_when("zero3", out, lambda: stage_entry(out, 3).get("last_checkpoint") is not None
               and stage_entry(out, 3).get("status") == "running")
    killed_at = stage_entry(out, 3)
    assert killed_at["step"] < 6 and killed_at["zero_stage"] == 3
    r = launch("zero3", out)
    log = r.stdout + r.stderr
    assert "[stage 1] already completed" in log and "[stage 2] already completed" in log
    assert resumed_from(log, 3) >= Path(killed_at["last_checkpoint"]).name
    assert [read_state(out)["stages"][s]["status"] for s in "123"] == ["completed"] * 3
    assert_close_losses(step_losses(zero2_reference), step_losses(out))
    best = torch.load(out / "checkpoints" / "best_model.pt", map_location="cpu", weights_only=True)
    ref = torch.load(zero2_reference / "checkpoints" / "best_model.pt", map_location="cpu", weights_only=True)
    assert best["model_state"].keys() == ref["model_state"].keys()  # gathered from the ZeRO-3 shards, + D
    for k, v in best["model_state"].items():
        assert v.shape == ref["model_state"][k].shape and torch.allclose(v, ref["model_state"][k], atol=1e-3), k
    generate_from(out / "checkpoints" / "best_model.pt", tmp_path)
