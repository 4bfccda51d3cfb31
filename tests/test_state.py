"""aurl.train.state: atomic state with .bak, corrupt detection, mismatch refusal, the run lock."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from aurl.console import UserError
from aurl.train import state as st


def _state_with_stage(**kw):
    s = st.new_state()
    s["stages"]["1"] = st.new_stage_entry(world_size=1, micro_batch=4, grad_accum=1, seed=0,
                                          data_fingerprint="abc", config_hash="h1", **kw)
    return s


def test_write_read_and_bak(tmp_path):
    s = _state_with_stage()
    st.write_state(tmp_path, s)
    assert st.read_state(tmp_path)["stages"]["1"]["status"] == "pending"
    assert not (tmp_path / "training_state.json.bak").exists()
    s["stages"]["1"]["step"] = 5
    st.write_state(tmp_path, s)
    assert st.read_state(tmp_path)["stages"]["1"]["step"] == 5
    assert json.loads((tmp_path / "training_state.json.bak").read_text())["stages"]["1"]["step"] == 0
    assert not list(tmp_path.glob("*.tmp*"))


@pytest.mark.parametrize("text", ["{not json", "[]", '{"schema_version": 99, "stages": {}}',
                                  '{"schema_version": 1, "stages": {"1": {"status": "weird"}}}',
                                  '{"schema_version": 1, "stages": {"1": {"status": "running", "epoch": 0, '
                                  '"step": "3", "batch": 0}}}'],
                         ids=["truncated", "list", "schema", "status", "step-not-int"])
def test_corrupt_state_is_detected_and_bak_offered(tmp_path, text):
    st.write_state(tmp_path, _state_with_stage())
    st.write_state(tmp_path, _state_with_stage())  # now a .bak exists
    (tmp_path / "training_state.json").write_text(text)
    with pytest.raises(UserError) as e:
        st.read_state(tmp_path)
    assert "corrupt" in str(e.value) and ".bak" in str(e.value)
    # a corrupt file never overwrites the good .bak
    st.write_state(tmp_path, _state_with_stage())
    assert json.loads((tmp_path / "training_state.json.bak").read_text())["schema_version"] == 1


def test_mismatch_refusal_names_what_differs():
    entry = _state_with_stage()["stages"]["1"]
    run = {k: entry[k] for k in st.RESUME_KEYS}
    st.check_resumable(entry, run, 1)
    with pytest.raises(UserError) as e:
        st.check_resumable(entry, {**run, "seed": 3, "data_fingerprint": "zzz"}, 1)
    msg = str(e.value)
    assert "seed" in msg and "data_fingerprint" in msg and "config_hash" not in msg


def test_a_zero_stage_or_a_setting_recorded_on_one_side_only_is_refused():
    """A ZeRO checkpoint has another layout than a DDP one, so zero_stage is compared (None without DeepSpeed);
    a setting that only one side has (a key added or dropped since) is a difference too.
    Mutations: LAYOUT_KEYS emptied -> the zero_stage refusal fails; settings compared only on the keys both
    have -> the one-sided refusal fails."""
    entry = _state_with_stage(zero_stage=2, settings={"optim.lr": 0.1})["stages"]["1"]
    run = {k: entry[k] for k in (*st.RESUME_KEYS, "zero_stage", "settings")}
    st.check_resumable(entry, run, 1)
    with pytest.raises(UserError, match="zero_stage: recorded 2, now None"):
        st.check_resumable(entry, {**run, "zero_stage": None}, 1)
    with pytest.raises(UserError, match="train.seq_len: recorded None, now 64"):
        st.check_resumable(entry, {**run, "settings": {"optim.lr": 0.1, "train.seq_len": 64}}, 1)


def test_the_keys_a_resume_may_change_are_exactly_the_documented_ones():
    """Every config key but these (the module docstring's list) is recorded in a stage's settings, so a change
    of any other (train.patience, data.seq_len, model.*, augment.*, optim.*) refuses the resume.
    Mutation: train.patience added to RESUME_FREE_KEYS -> fails (as does dropping any listed key)."""
    from aurl.config import load_config

    cfg = load_config(None)
    every = {f"{section}.{key}" for section, values in cfg.to_dict().items() for key in values}
    free = every - set(st.resume_settings(cfg))
    whole = {k for k in every if k.split(".")[0] in ("logging", "checkpoint", "eval")}
    assert len(whole) >= 10 and len(every - free) >= 40, (len(whole), len(every - free))
    assert free == whole | {"data.data_dir", "data.cache_dir", "data.num_workers", "train.stop_margin_s",
                            "train.compile", "train.activation_checkpointing"}


def test_another_world_size_resumes_when_it_splits_the_global_batch():
    """The recorded global batch (4 x 1 x 1 process) splits over 2 and 4 processes; over 3 it cannot: the
    refusal names the process counts that work."""
    entry = _state_with_stage()["stages"]["1"]
    run = {k: entry[k] for k in st.RESUME_KEYS}
    for world in (1, 2, 4):
        st.check_resumable(entry, {**run, "world_size": world}, 1)
    with pytest.raises(UserError) as e:
        st.check_resumable(entry, {**run, "world_size": 3}, 1)
    msg = str(e.value)
    assert "global batch is 4" in msg and "3 processes cannot share it" in msg and "{1, 2, 4}" in msg, msg
    assert "--num_processes" in msg


@pytest.mark.parametrize("config, world, recorded, want", [
    ((2, 1), 1, (2, 2, 1), (1, 2, 2)),   # 2 -> 1: the accumulation doubles
    ((2, 2), 2, (1, 2, 4), (2, 2, 2)),   # back to 2: the config's own split
    ((1, 3), 3, (2, 1, 3), (3, 1, 2)),   # 2 -> 3, G = 6
    ((4, 1), 2, (1, 4, 1), (2, 2, 1)),   # 4 per process no longer fits G / M = 2: micro-batch 2, logged
    ((4, 1), 3, (1, 6, 1), (3, 2, 1)),   # G / M = 2 again, data.batch_size 4: the largest divisor below it
    ((4, 1), 2, (1, 3, 4), (2, 3, 2)),   # G / M = 6: 4 does not divide it, 3 (the nearest below) does
    ((4, 2), 1, None, (1, 4, 2)),        # a fresh stage: the config's split
], ids=["2to1", "1to2", "2to3", "micro-shrinks", "micro-divisor", "micro-below", "fresh"])
def test_layout_keeps_the_global_batch(config, world, recorded, want):
    from aurl.train.elastic import layout_for

    entry = dict(zip(("world_size", "micro_batch", "grad_accum"), recorded, strict=True)) if recorded else None
    got = layout_for(*config, world, entry, resuming=entry is not None)
    assert (got.world_size, got.micro_batch, got.grad_accum) == want
    if recorded:
        assert got.global_batch == recorded[0] * recorded[1] * recorded[2]


def test_lock_live_and_released_on_kill(tmp_path):
    assert not st.is_live(tmp_path)
    lock = st.RunLock(tmp_path).acquire()
    assert st.is_live(tmp_path)
    with pytest.raises(UserError, match="another run is live"):
        st.RunLock(tmp_path).acquire()
    lock.release()
    assert not st.is_live(tmp_path)
    # a process killed with SIGKILL leaves the file, but not the lock
    code = ("import sys,time; from aurl.train.state import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "locked"
    assert st.is_live(tmp_path)
    p.kill()
    p.wait()
    assert not st.is_live(tmp_path)


def test_refusal_names_each_changed_setting_once():
    from aurl.config import load_config

    cfg = load_config(None)
    entry = st.new_stage_entry(world_size=1, micro_batch=8, grad_accum=1, seed=0, data_fingerprint="abc",
                               config_hash=cfg.hash(), settings=st.resume_settings(cfg))
    run = {**entry, "settings": st.resume_settings(load_config(None, ["train.epochs=11", "optim.lr=1e-3",
                                                                       "logging.log_every_steps=3",
                                                                       "checkpoint.keep=4", "eval.enabled=false",
                                                                       "train.stop_margin_s=5"]))}
    with pytest.raises(UserError) as e:
        st.check_resumable(entry, {**run, "config_hash": "other"}, 1)
    msg = str(e.value)
    assert "train.epochs: recorded 10, now 11" in msg and "optim.lr: recorded 0.0003, now 0.001" in msg
    assert msg.count(": recorded") == 2  # not config_hash again, and not the keys a resume may change
    st.check_resumable(entry, {**entry, "settings": st.resume_settings(load_config(None, ["eval.length=9"]))}, 1)


# a resume with one changed setting: the key, its recorded and its new value (tiny stage 1 stopped at step 1)
CHANGED = [("train.epochs=3", "train.epochs: recorded 2, now 3"),
           ("train.max_steps=5", "train.max_steps: recorded 4, now 5"),
           ("optim.lr=0.002", "optim.lr: recorded 0.001, now 0.002"),
           ("optim.warmup_steps=3", "optim.warmup_steps: recorded 2, now 3"),
           ("data.batch_size=2", "data.batch_size: recorded 4, now 2"),
           ("train.mixed_precision=bf16", "train.mixed_precision: recorded 'no', now 'bf16'"),
           ("train.patience=2", "train.patience: recorded 0, now 2")]


def _tree(*roots):
    """Every file under roots: path -> (bytes, mtime), to show that nothing changed."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for r in roots for p in sorted(r.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_resume_with_a_changed_setting_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from aurl.train.__main__ import main
    from aurl.train.preemption import STOPPED_EXIT

    tiny = Path(__file__).resolve().parents[1] / "configs" / "training_configs" / "tiny"
    out, cache = tmp_path / "run", tmp_path / "cache"
    args = ["--config", str(tiny), "--output-dir", str(out), "--stage", "1", f"data.cache_dir={cache}",
            "train.max_steps=4", "eval.enabled=false", "logging.tracker=none"]
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1")  # the deadline has passed: stop (commit) after the first step
    assert main(args) == STOPPED_EXIT
    monkeypatch.delenv("SLURM_JOB_END_TIME")
    entry = st.read_state(out)["stages"]["1"]
    assert entry["status"] == "stopped" and entry["step"] == 1 and entry["last_checkpoint"]
    capsys.readouterr()
    before = _tree(out, cache)
    refused = 0
    for change, named in CHANGED:
        assert main([*args, change]) == 2, change
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err and "cannot resume" in err, err
        assert _tree(out, cache) == before, change  # nothing written, not even the lock file
        refused += 1
    assert refused == len(CHANGED)
    # the keys a resume may change: it resumes and finishes
    assert main([*args, "logging.log_every_steps=2", "checkpoint.keep=3", "train.stop_margin_s=1"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert st.read_state(out)["stages"]["1"]["status"] == "completed"


def test_a_resume_starts_at_the_checkpoints_global_sample_cursor():
    """The checkpoint's cursor counts samples over all ranks, so 24 samples done on 2 processes are batch 4 of
    a launch on 3 processes of micro-batch 2 (6 samples a batch); a checkpoint from before the global cursor
    (a per-rank batch) resumes only on its own world size; a DeepSpeed checkpoint is converted to a universal
    one only when the world size changes. Mutations: the cursor divided by the micro-batch alone -> 12, fails;
    the old checkpoint's world-size check dropped -> no refusal, fails; needs_universal without the world
    comparison -> fails."""
    from aurl.train.elastic import Layout, needs_universal, start_batch

    assert start_batch({"sample": 24, "world_size": 2}, Layout(3, 2, 1)) == 4
    assert start_batch({"batch": 5, "world_size": 2}, Layout(2, 4, 1)) == 5
    with pytest.raises(UserError, match="predates elastic resume: relaunch with --num_processes 2"):
        start_batch({"batch": 5, "world_size": 2}, Layout(3, 4, 1))
    assert needs_universal(True, 2, 3) and not needs_universal(True, 2, 2)
    assert not needs_universal(False, 2, 3) and not needs_universal(True, None, 3)
