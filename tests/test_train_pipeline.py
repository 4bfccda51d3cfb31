"""The trainer as users run it: real processes on the tiny configs (CPU, seconds per stage).

One uninterrupted reference run is shared by the tests (session fixture); the kill tests compare against it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import (
    REPO,
    TINY,
    KilledRuns,
    assert_replays_reference,
    assert_same_tensors,
    model_size,
    read_state,
    records,
    stage_entry,
    step_losses,
    wait_for,
)

from aurl.train.checkpoint import KILL_AT_ENV

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
ENV.pop(KILL_AT_ENV, None)

# The stage-end evaluation changes nothing in training (it is not part of the resume check either), so only
# the reference runs, which check it, pay for it.
NO_EVAL = ("eval.enabled=false",)
# Every run of this module: micro-batches of 2 (with grad_accum 2: 7 optimizer steps per epoch on one process,
# 3 on two) and a commit after every step, so that most commits, hence most resumes, land mid-epoch.
MID_EPOCH = ("data.batch_size=2", "checkpoint.every_steps=1")


def train_cmd(out: Path, *extra: str, evaluate: bool = False) -> list[str]:
    return [sys.executable, "-m", "aurl.train", "--config", str(TINY), "--output-dir", str(out), *MID_EPOCH,
            *extra, *(() if evaluate else NO_EVAL)]


def run(out: Path, *extra: str, check: bool = True, timeout: float = 240, evaluate: bool = False,
        env: dict | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run(train_cmd(out, *extra, evaluate=evaluate), cwd=REPO, env=env or ENV, capture_output=True,
                       text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def assert_same_models(ref: Path, out: Path, stages=(1, 2, 3), best_model: bool = True) -> int:
    """Every tensor of every saved model equal bit for bit: best_model.pt, each stage's best.pt and its last
    committed checkpoint's weights; returns how many tensors were compared."""
    n = 0
    pairs = [(ref / "checkpoints" / "best_model.pt", out / "checkpoints" / "best_model.pt")] if best_model else []
    for s in stages:
        pairs.append((ref / "checkpoints" / f"stage{s}" / "best.pt", out / "checkpoints" / f"stage{s}" / "best.pt"))
    for a, b in pairs:
        n += assert_same_tensors(a, b, expected=model_size(a))
    for s in stages:
        a = Path(stage_entry(ref, s)["last_checkpoint"])
        b = Path(stage_entry(out, s)["last_checkpoint"])
        assert a.name == b.name
        n += assert_same_tensors(a, b, expected=model_size(ref / "checkpoints" / f"stage{s}" / "best.pt"))
    return n


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


def staging_dirs(out: Path, stage: int) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints" / f"stage{stage}").glob(".staging-*"))


def test_kill9_and_resume_is_exact(reference, tmp_path):
    """Kill -9 at each phase of the commit protocol (the test-only fault point) and once from outside,
    mid-epoch in stage 3; each time the same command resumes from the newest committed checkpoint, replays
    the steps after it exactly once, and the end result equals the uninterrupted run bit for bit: every
    logged record of every run, every tensor of every saved model."""
    out = tmp_path / "run"
    runs = KilledRuns(out, train_cmd(out), ENV)
    # stage 1 (7 steps per epoch, 12 steps): killed with step 4's staging dir half written (model, optimizer,
    # RNG states, no meta.json): a leftover that must never be loaded, and is cleaned up by the rerun
    runs.fault("staging_partial", 1, 4)
    assert runs.expected[-1] == (1, 3) and staging_dirs(out, 1) == [".staging-step_00000004"]
    # staging complete (meta.json written) but never renamed: still not a checkpoint
    runs.fault("before_rename", 1, 9)
    assert runs.expected[-1] == (1, 8) and staging_dirs(out, 1) == [".staging-step_00000009"]
    assert (out / "checkpoints" / "stage1" / ".staging-step_00000009" / "meta.json").is_file()
    # stage 2: renamed, the state file still names step 2: the newer committed step 3 is the one to load
    runs.fault("before_state_file", 2, 3)
    assert runs.expected[-1] == (2, 3) and Path(stage_entry(out, 2)["last_checkpoint"]).name == "step_00000002"
    assert stage_entry(out, 1)["status"] == "completed" and not staging_dirs(out, 1)
    # stage 3 (G and D, two optimizers): kill -9 from outside once it has committed mid-epoch
    runs.kill9(lambda: 2 <= stage_entry(out, 3).get("step", 0) < 6, 3)
    log = runs.finish()
    assert "resuming from" in log
    runs.check_resumes()
    assert [s for s, _ in filter(None, runs.resumes)] == [1, 1, 2, 3]
    assert all(batch > 0 for _, batch in filter(None, runs.cursors)), runs.cursors  # every resume mid-epoch

    state = read_state(out)
    assert [state["stages"][s]["status"] for s in "123"] == ["completed"] * 3
    assert not any(staging_dirs(out, s) for s in (1, 2, 3))
    ref = records(reference)
    compared = assert_replays_reference(ref, runs.segments, runs.resumes)
    assert compared - len(ref) >= 2, compared  # the replayed steps (4 and 9) were compared too
    assert any("d/loss" in r for r in ref if r["stage"] == 3)  # the discriminator's losses among them
    assert assert_same_models(reference, out) > 0


def test_uncommitted_checkpoint_is_never_loaded(reference, tmp_path):
    stage1 = tmp_path / "stage1"
    shutil.copytree(reference / "checkpoints" / "stage1", stage1)
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

    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(reference / "training_state.json", out / "training_state.json")
    shutil.copy(reference / "training_state.json", out / "training_state.json.bak")
    (out / "training_state.json").write_text('{"schema_version": 1, "stages": {"1": ')
    for extra in ((), ("--status",)):
        r = run(out, *extra, check=False)
        assert r.returncode == 2 and "corrupt" in r.stderr and ".bak" in r.stderr


def test_resume_requires_a_run_and_clear(tmp_path, capsys):
    """--resume refuses a folder without a run; --status tells a live run (its lock held: this test process
    plays it) from a finished one; --clear asks, then deletes what it names and keeps the cache."""
    from aurl.train.__main__ import main
    from aurl.train.state import RunLock

    out = tmp_path / "run"
    r = run(out, "--resume", check=False)
    assert r.returncode == 2 and "no run to resume" in r.stderr
    run(out, "--stage", "1", "train.max_steps=2")
    capsys.readouterr()
    assert main(["--status", "--output-dir", str(out)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("run ") and ": not running; current stage 1" in first, first
    lock = RunLock(out).acquire()
    try:
        assert main(["--status", "--output-dir", str(out)]) == 0
        first = capsys.readouterr().out.splitlines()[0]
        assert f": LIVE (pid {os.getpid()} on " in first and "; current stage 1" in first, first
    finally:
        lock.release()
    r = subprocess.run(train_cmd(out, "--clear"), cwd=REPO, env=ENV, input="n\n", capture_output=True, text=True)
    assert (out / "training_state.json").exists() and "nothing deleted" in r.stdout
    before = sorted(p.name for p in out.iterdir())
    run(out, "--clear", "--yes")
    # the state (and its .bak), checkpoints, logs and lock go; the token cache stays (and the evaluations would)
    assert set(before) == {"training_state.json", "training_state.json.bak", "checkpoints", "logs", "training.lock",
                           "cache"}, before
    assert sorted(p.name for p in out.iterdir()) == ["cache"], (before, sorted(out.iterdir()))


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

    out = tmp_path / "run"
    shutil.copytree(reference, out, ignore=shutil.ignore_patterns("training.lock"))
    state = read_state(out)
    state["stages"]["3"]["status"] = "running"
    (out / "training_state.json").write_text(json.dumps(state))
    r = run(out, "--stage", "3", "stage3.data.batch_size=3", check=False)
    assert r.returncode == 2 and "data.batch_size: recorded 2, now 3" in r.stderr


def launch_cmd(out: Path, *extra: str) -> list[str]:
    """Two CPU processes through launch/run.sh: with no GPU it picks accelerate_configs/cpu.yaml and the CPU
    recipe of shared/notes/environment.md (a real `accelerate launch`, torchrun, gloo)."""
    return ["bash", str(REPO / "launch" / "run.sh"), "--config", str(TINY), "--output-dir", str(out), *MID_EPOCH,
            *extra]


LAUNCH_ENV = {**{k: v for k, v in ENV.items() if k not in ("AURL_ACCELERATE_CONFIG", "AURL_NUM_PROCESSES",
                                                             "ACCELERATE_USE_CPU")},
              "AURL_SKIP_ENV": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
              "CUDA_VISIBLE_DEVICES": ""}  # run.sh then picks the CPU config on a GPU machine too


@pytest.fixture(scope="session")
def two_process_reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference2")
    r = subprocess.run(launch_cmd(out), cwd=REPO, env=LAUNCH_ENV, capture_output=True, text=True,
                       timeout=400)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "accelerate_configs/cpu.yaml, 2 process(es)" in r.stderr  # run.sh's pick without a GPU
    assert "ProcessGroup" not in r.stderr and "abort" not in r.stderr.lower()  # end_training: a clean exit
    (out.parent / f"{out.name}_output.txt").write_text(r.stdout + r.stderr)  # for test_ddp_searches_unused_...
    return out


def test_ddp_searches_unused_parameters_only_in_vae_gan(two_process_reference):
    """DDP's find_unused_parameters is on only in stage 3 (vae_gan: each phase leaves the other network's
    weights without a gradient); stages 1 and 2 use every parameter, so with the search on DDP warned on every
    rank at their first step (and paid a graph traversal per step). Stage 3 completing at all shows the search
    is on there: without it DDP stops at the second step with "Expected to have finished reduction"."""
    output = (two_process_reference.parent / f"{two_process_reference.name}_output.txt").read_text()
    assert "[stage 3]" in output and "[stage 1]" in output  # the log of all three stages
    assert "find_unused_parameters=True was specified in DDP constructor, but did not find any unused" \
        not in output
    assert read_state(two_process_reference)["stages"]["3"]["status"] == "completed"


def test_two_processes_accelerate_launch(two_process_reference):
    out = two_process_reference
    state = read_state(out)
    assert [state["stages"][s]["status"] for s in "123"] == ["completed"] * 3
    assert state["stages"]["1"]["world_size"] == 2
    assert (out / "checkpoints" / "best_model.pt").is_file()
    assert (out / "eval" / "stage3" / "eval.json").is_file()  # rank 0 evaluated while rank 1 waited


def test_two_processes_kill9_and_resume(two_process_reference, tmp_path):
    """Two ranks (3 steps per epoch, a commit after each): rank 0 SIGKILLed between the rename and the state
    file mid-epoch (torchrun then ends rank 1), then the whole launch (launcher and both ranks) killed from
    outside mid-epoch; each rerun resumes from the newest commit and stage 1 ends as the uninterrupted
    two-process run ended: every record, every tensor, bit for bit."""
    out = tmp_path / "run"
    runs = KilledRuns(out, launch_cmd(out, "--stage", "1", *NO_EVAL), LAUNCH_ENV)
    runs.fault("before_state_file", 1, 2)
    assert runs.expected[-1] == (1, 2) and Path(stage_entry(out, 1)["last_checkpoint"]).name == "step_00000001"
    runs.kill9(lambda: stage_entry(out, 1).get("step", 0) >= 4, 1)
    assert runs.expected[-1][1] < 6
    runs.finish()
    runs.check_resumes()
    assert runs.resumes[1] == (1, 2)
    assert all(batch > 0 for _, batch in filter(None, runs.cursors)), runs.cursors  # every resume mid-epoch
    ref = [r for r in records(two_process_reference) if r["stage"] == 1]
    assert assert_replays_reference(ref, runs.segments, runs.resumes) >= len(ref)
    assert assert_same_models(two_process_reference, out, stages=(1,), best_model=False) > 0


def stop_with(sig: signal.Signals, out: Path, at_step: int) -> str:
    """Start stage 1, send `sig` once it has committed `at_step`; the run must stop gracefully: a commit at the
    next step boundary, status "stopped", exit 75. Returns its output."""
    proc = subprocess.Popen(train_cmd(out, "--stage", "1"), cwd=REPO, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert wait_for(lambda: stage_entry(out, 1).get("step", 0) >= at_step
                    and stage_entry(out, 1).get("status") == "running", proc)
    proc.send_signal(sig)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 75, log[-2000:]
    assert f"stop requested ({sig.name})" in log, log[-2000:]
    entry = stage_entry(out, 1)
    assert entry["status"] == "stopped" and entry["step"] < 12
    assert Path(entry["last_checkpoint"]).name == f"step_{entry['step']:08d}"  # committed where it stopped
    return log


def test_sigusr1_and_sigterm_stop_with_a_commit_then_resume(reference, tmp_path):
    """Preemption: the handler only sets a flag; the loop commits at the next step boundary and exits 75.
    SIGUSR1 (SLURM's warning) in the first run, SIGTERM (scancel, a time limit) in the second, both mid-epoch;
    each rerun resumes where the stop committed, and stage 1 ends as the uninterrupted run's did."""
    out = tmp_path / "run"
    runs = KilledRuns(out, train_cmd(out, "--stage", "1"), ENV)
    for sig, at_step in ((signal.SIGUSR1, 2), (signal.SIGTERM, 8)):
        runs.ended(stop_with(sig, out, at_step))
        runs.expect(1)
        assert runs.expected[-1] == (1, stage_entry(out, 1)["step"])
    runs.finish()
    runs.check_resumes()
    assert stage_entry(out, 1)["status"] == "completed"
    ref = [r for r in records(reference) if r["stage"] == 1]
    assert assert_replays_reference(ref, runs.segments, runs.resumes) >= len(ref)
    assert assert_same_models(reference, out, stages=(1,), best_model=False) > 0


def _remove_while_written(folder: Path) -> None:
    """rmtree of a folder the trainer may be writing into: a file created between rmtree's scan and its rmdir
    fails it with ENOTEMPTY (seen once under load), so it tries again."""
    for _ in range(50):
        try:
            shutil.rmtree(folder)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{folder} could not be removed while the trainer wrote into it")


def test_a_tracker_failing_mid_run_does_not_stop_training(reference, tmp_path):
    """A real TensorBoard writer made to fail mid-run (its folder deleted: its next flush raises in the
    training process): the tracker is dropped with a warning, training goes on, and stage 1 logs exactly
    the records of the run without a tracker."""
    out = tmp_path / "run"
    tb = out / "logs" / "tensorboard"
    proc = subprocess.Popen(train_cmd(out, "--stage", "1", "logging.tracker=tensorboard"), cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert wait_for(lambda: len(records(out)) >= 2 and any(tb.rglob("events.out.tfevents.*")), proc)
    _remove_while_written(tb)
    log, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, log[-3000:]
    failures = [line for line in log.splitlines() if "tracker TensorBoardTracker failed" in line]
    assert len(failures) == 1 and "dropped" in failures[0], log[-3000:]  # once: a dropped tracker is not called again
    assert stage_entry(out, 1)["status"] == "completed"
    ref = [r for r in records(reference) if r["stage"] == 1]
    assert assert_replays_reference(ref, [records(out)], [None]) >= len(ref)
