"""The trainer as users run it: real processes on the tiny configs (CPU, seconds per stage).

One uninterrupted reference run is shared by the tests (session fixture); the kill tests compare against it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from run_helpers import REPO, TINY, kill9_tree, read_state, stage_entry, step_losses, wait_for

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


# The stage-end evaluation changes nothing in training (it is not part of the resume check either), so only
# the reference runs, which check it, pay for it.
NO_EVAL = ("eval.enabled=false",)


def train_cmd(out: Path, *extra: str, evaluate: bool = False) -> list[str]:
    return [sys.executable, "-m", "aurl.train", "--config", str(TINY), "--output-dir", str(out), *extra,
            *(() if evaluate else NO_EVAL)]


def run(out: Path, *extra: str, check: bool = True, timeout: float = 240,
        evaluate: bool = False) -> subprocess.CompletedProcess:
    r = subprocess.run(train_cmd(out, *extra, evaluate=evaluate), cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    ta = {k: v for k, v in wa.items() if isinstance(v, torch.Tensor)} if "state_dict" not in wa else wa["state_dict"]
    tb = {k: v for k, v in wb.items() if isinstance(v, torch.Tensor)} if "state_dict" not in wb else wb["state_dict"]
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    run(out, evaluate=True)
    return out


def test_three_stages_one_process(reference):
    state = read_state(reference)
    assert [state["stages"][s]["status"] for s in "123"] == ["completed"] * 3
    for s in "123":
        e = state["stages"][s]
        assert e["best_val_loss"] is not None and Path(e["best_checkpoint"]).is_file()
        assert Path(e["last_checkpoint"]).is_dir() and (Path(e["last_checkpoint"]) / "meta.json").is_file()
        assert e["world_size"] == 1
    best = reference / "checkpoints" / "best_model.pt"
    assert best.is_file() and best.with_suffix(".json").is_file()
    meta = json.loads(best.with_suffix(".json").read_text())
    assert "vae_gan" in json.dumps(meta)  # the most advanced stage reached
    # at most `keep` committed checkpoints per stage, and no staging dir left behind
    for s in (1, 2, 3):
        d = reference / "checkpoints" / f"stage{s}"
        assert len(list(d.glob("step_*"))) <= 2 and not list(d.glob(".staging-*"))
    recs = step_losses(reference)
    assert any(k[0] == 3 and k[2] == "val" for k in recs)
    # each stage's best model was evaluated at the stage end: report, MIDI samples, loss curves, piano rolls
    for s in (1, 2, 3):
        ev = reference / "eval" / f"stage{s}"
        report = json.loads((ev / "eval.json").read_text())
        assert report["stage"] == s and report["samples"]["num"] == 2
        assert report["samples"]["grammar_errors"] == dict.fromkeys(report["samples"]["grammar_errors"], 0)
        assert (ev / "loss_curves.png").stat().st_size > 1000 and (ev / "sample_000.png").stat().st_size > 1000
        assert (ev / "sample_000.mid").is_file()


def test_best_model_loads_for_generation(reference):
    from aurl.model.checkpoint import load_model_file

    model, cfg, _ = load_model_file(reference / "checkpoints" / "best_model.pt")
    assert cfg.mode == "vae_gan"


def test_status_read_only(reference):
    before = (reference / "training_state.json").read_bytes()
    r = subprocess.run([sys.executable, "-m", "aurl.train", "--status", "--output-dir", str(reference)], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "stage 1: completed" in r.stdout and "stage 3: completed" in r.stdout and "best val" in r.stdout
    assert f"latest evaluation: {reference / 'eval' / 'stage3' / 'eval.json'}" in r.stdout
    assert str(reference / "eval" / "stage3" / "loss_curves.png") in r.stdout
    assert (reference / "training_state.json").read_bytes() == before


def test_completed_run_is_idempotent(reference, tmp_path):
    r = run(reference, "--stage", "3")
    assert "already completed" in r.stdout + r.stderr


def test_kill9_and_resume_is_exact(reference, tmp_path):
    """SIGKILL during a checkpoint save (stage 1), between stages (1 -> 2), mid-epoch (stage 3); each time the
    same command resumes; the end result equals the uninterrupted run bit for bit."""
    out = tmp_path / "run"
    moments = [
        ("during a save", lambda: any((out / "checkpoints" / "stage1").glob(".staging-*"))
         or (stage_entry(out, 1).get("step", 0) >= 3)),
        ("between stages", lambda: stage_entry(out, 1).get("status") == "completed"),
        ("mid-epoch", lambda: stage_entry(out, 3).get("last_checkpoint") is not None),
    ]
    for what, pred in moments:
        proc = subprocess.Popen(train_cmd(out), cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        hit = wait_for(pred, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert hit, f"never reached the moment {what!r}"
    run(out)
    state = read_state(out)
    assert [state["stages"][s]["status"] for s in "123"] == ["completed"] * 3
    ref, got = step_losses(reference), step_losses(out)
    assert ref.keys() == got.keys()
    assert ref == got  # identical losses at every step (one process, CPU)
    assert_same_weights(reference / "checkpoints" / "best_model.pt", out / "checkpoints" / "best_model.pt")
    for s in (1, 2, 3):
        a = sorted((reference / "checkpoints" / f"stage{s}").glob("step_*"))[-1]
        b = sorted((out / "checkpoints" / f"stage{s}").glob("step_*"))[-1]
        assert a.name == b.name
        fa = sorted(p.name for p in a.iterdir())
        assert fa == sorted(p.name for p in b.iterdir())
        for name in fa:
            if name.endswith((".safetensors", ".bin")) and "optimizer" not in name:
                assert (a / name).read_bytes() == (b / name).read_bytes(), (s, name)


def test_uncommitted_checkpoint_is_never_loaded(tmp_path):
    out = tmp_path / "run"
    run(out, "--stage", "1", "train.max_steps=3", "train.epochs=1")
    stage1 = out / "checkpoints" / "stage1"
    committed = sorted(stage1.glob("step_*"))
    assert committed
    # a later save killed mid-write: a staging dir and a renamed dir without its meta.json
    (stage1 / ".staging-step_00000099").mkdir()
    bad = stage1 / "step_00000098"
    bad.mkdir()
    (bad / "garbage.bin").write_bytes(b"\0" * 10)
    from aurl.train import checkpoint as ckpt

    assert ckpt.latest(stage1, None) == committed[-1]
    assert ckpt.latest(stage1, str(bad)) == committed[-1]


def test_stage_needs_earlier_weights(tmp_path):
    r = run(tmp_path / "run", "--stage", "2", check=False)
    assert r.returncode == 2 and "stage 1" in r.stderr and "--from-scratch" in r.stderr


def test_stage_from_scratch(tmp_path):
    out = tmp_path / "run"
    run(out, "--stage", "2", "--from-scratch", "stage2.train.max_steps=2")
    assert read_state(out)["stages"]["2"]["status"] == "completed"


@pytest.mark.parametrize("override, key", [("train.epochz=2", "train.epochz"), ("train.epochs=two", "train.epochs"),
                                           ("stage3.model.latent_dim=1.5", "model.latent_dim"),
                                           ("optimizer.lr=1", "optimizer")])
def test_bad_config_refused_before_work(tmp_path, override, key):
    out = tmp_path / "run"
    r = run(out, override, check=False)
    assert r.returncode == 2 and key in r.stderr
    assert not (out / "training_state.json").exists() and not (out / "checkpoints").exists()


def test_corrupt_state_offers_bak(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(reference / "training_state.json", out / "training_state.json")
    shutil.copy(reference / "training_state.json", out / "training_state.json.bak")
    (out / "training_state.json").write_text('{"schema_version": 1, "stages": {"1": ')
    for extra in ((), ("--status",)):
        r = run(out, *extra, check=False)
        assert r.returncode == 2 and "corrupt" in r.stderr and ".bak" in r.stderr


def test_resume_requires_a_run_and_clear(tmp_path):
    out = tmp_path / "run"
    r = run(out, "--resume", check=False)
    assert r.returncode == 2 and "no run to resume" in r.stderr
    run(out, "--stage", "1", "train.max_steps=2")
    r = subprocess.run(train_cmd(out, "--clear"), cwd=REPO, env=ENV, input="n\n", capture_output=True, text=True)
    assert (out / "training_state.json").exists() and "nothing deleted" in r.stdout
    run(out, "--clear", "--yes")
    assert not (out / "training_state.json").exists() and not (out / "checkpoints").exists()


def test_clear_refuses_while_live(tmp_path):
    from aurl.train.state import RunLock

    out = tmp_path / "run"
    out.mkdir()
    (out / "training_state.json").write_text("{}")
    lock = RunLock(out).acquire()  # this test process plays the live run
    try:
        r = run(out, "--clear", "--yes", check=False)
        assert r.returncode == 2 and "live run" in r.stderr
        run(out, "--clear", "--yes", "--force")
        assert not (out / "training_state.json").exists()
    finally:
        lock.release()


def test_mismatched_state_refused(reference, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("training.lock"))
    state = read_state(out)
    state["stages"]["3"]["status"] = "running"
    (out / "training_state.json").write_text(json.dumps(state))
    r = run(out, "--stage", "3", "stage3.data.batch_size=2", check=False)
    assert r.returncode == 2 and "micro_batch" in r.stderr


def launch_cmd(out: Path, *extra: str) -> list[str]:
    """Two CPU processes through launch/run.sh: with no GPU it picks accelerate_configs/cpu.yaml and the CPU
    recipe of shared/notes/environment.md (a real `accelerate launch`, torchrun, gloo)."""
    return ["bash", str(REPO / "launch" / "run.sh"), "--config", str(TINY), "--output-dir", str(out), *extra]


LAUNCH_ENV = {**{k: v for k, v in ENV.items() if k not in ("AURL_ACCELERATE_CONFIG", "AURL_NUM_PROCESSES",
                                                             "ACCELERATE_USE_CPU")},
              "AURL_SKIP_ENV": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
              "CUDA_VISIBLE_DEVICES": ""}  # run.sh then picks the CPU config on a GPU machine too
# a longer stage 1 than the tiny default, so that a kill after the first commit lands well before its end
LONGER_STAGE1 = ("stage1.train.epochs=20", "stage1.train.max_steps=40")


@pytest.fixture(scope="session")
def two_process_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference2")
    r = subprocess.run(launch_cmd(out, *LONGER_STAGE1), cwd=REPO, env=LAUNCH_ENV, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "accelerate_configs/cpu.yaml, 2 process(es)" in r.stderr  # run.sh's pick without a GPU
    assert "ProcessGroup" not in r.stderr and "abort" not in r.stderr.lower()  # end_training: a clean exit
    return out


def test_two_processes_accelerate_launch(two_process_reference):
    out = two_process_reference
    state = read_state(out)
    assert [state["stages"][s]["status"] for s in "123"] == ["completed"] * 3
    assert state["stages"]["1"]["world_size"] == 2
    assert (out / "checkpoints" / "best_model.pt").is_file()
    assert (out / "eval" / "stage3" / "eval.json").is_file()  # rank 0 evaluated while rank 1 waited


def test_two_processes_kill9_and_resume(two_process_reference, tmp_path):
    """SIGKILL to the whole launch (the launcher and both ranks) mid-stage, the same command again: stage 1 ends
    where the uninterrupted two-process run ended, with the same losses (float tolerance)."""
    out = tmp_path / "run"
    proc = subprocess.Popen(launch_cmd(out, "--stage", "1", *LONGER_STAGE1, *NO_EVAL), cwd=REPO, env=LAUNCH_ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    hit = wait_for(lambda: (e := stage_entry(out, 1)).get("last_checkpoint") is not None
                   and e.get("status") == "running", proc)
    kill9_tree(proc.pid)
    proc.wait()
    assert hit, "the run never committed a checkpoint while running"
    killed_at = stage_entry(out, 1)["step"]
    r = subprocess.run(launch_cmd(out, "--stage", "1", *LONGER_STAGE1, *NO_EVAL), cwd=REPO, env=LAUNCH_ENV,
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "resuming from" in r.stdout + r.stderr
    ref = {k: v for k, v in step_losses(two_process_reference).items() if k[0] == 1}
    got = step_losses(out)
    assert ref.keys() == got.keys() and killed_at < max(k[1] for k in ref)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-6), k


def test_sigusr1_stops_with_a_commit_then_resumes(tmp_path):
    """Preemption: the handler only sets a flag; the loop commits at the next step boundary and exits 75."""
    out = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(out, "--stage", "1"), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert wait_for(lambda: stage_entry(out, 1).get("status") == "running", proc)
    proc.send_signal(signal.SIGUSR1)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 75, log[-2000:]
    entry = stage_entry(out, 1)
    assert entry["status"] == "stopped" and Path(entry["last_checkpoint"]).is_dir()
    run(out, "--stage", "1")
    assert stage_entry(out, 1)["status"] == "completed"
