"""aurl.train.resume: what a stage records to be resumed, and rank 0's decision. A fresh stage starts from
nothing; a stage with commits resumes from the newest committed one (a half-written one is never taken);
a stage recorded under other settings is refused naming the difference. (Resumes of real runs, killed in
each phase of the commit protocol: test_train_pipeline.py; on other numbers of processes: test_elastic.py.)"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from test_trainer import TINY

from aurl.console import UserError
from aurl.rundir import RunDir
from aurl.train import checkpoint as ckpt
from aurl.train import resume
from aurl.train import state as st
from aurl.train.pipeline import load_pipeline, make_accelerator


def _commit(stage_dir, step: int, committed: bool = True) -> None:
    folder = stage_dir / (ckpt.step_name(step) if committed else ckpt.STAGING_PREFIX + ckpt.step_name(step))
    folder.mkdir(parents=True)
    (folder / ckpt.META).write_text(json.dumps({"step": step, "world_size": 1}))


def test_a_stage_resumes_from_its_newest_commit_or_is_refused_naming_the_change(tmp_path):
    """Mutations: resume_point not checking the entry against this run (check_resumable left out) -> fails;
    run_record without its "settings" (a changed key named only as a config_hash) -> fails."""
    cfg, acc = load_pipeline(TINY, [])[1], make_accelerator("no")
    run = resume.run_record(cfg, acc)
    assert (run["world_size"], run["zero_stage"], run["mixed_precision"]) == (1, None, "no")
    assert "data_fingerprint" not in run and resume.run_record(cfg, acc, "fp")["data_fingerprint"] == "fp"
    rundir = RunDir(tmp_path)
    fresh = resume.decide(acc, rundir, 1, run)
    assert (fresh.checkpoint, fresh.entry, fresh.meta, fresh.universal) == (None, None, None, False)

    stage_dir = rundir.stage_checkpoints(1)
    _commit(stage_dir, 2)
    _commit(stage_dir, 4)
    _commit(stage_dir, 6, committed=False)  # killed before its rename
    state = st.new_state()
    state["stages"]["1"] = st.new_stage_entry(**run, last_checkpoint=str(stage_dir / ckpt.step_name(2)))
    st.write_state(tmp_path, state)
    decision = resume.decide(acc, rundir, 1, run)
    assert decision.checkpoint == stage_dir / ckpt.step_name(4)  # newer than the state file's record
    assert decision.meta == {"step": 4, "world_size": 1} and decision.entry["seed"] == run["seed"]

    other = resume.run_record(replace(cfg, train=replace(cfg.train, seed=cfg.train.seed + 1)), acc)
    with pytest.raises(UserError, match=f"stage 1 was started with other settings .*seed: recorded {run['seed']}"):
        resume.decide(acc, rundir, 1, other)
    assert resume.decide(acc, rundir, 2, other).checkpoint is None  # stage 2 has nothing to resume
    lr = cfg.optim.lr
    other = resume.run_record(replace(cfg, optim=replace(cfg.optim, lr=lr * 2)), acc)
    with pytest.raises(UserError, match=f"other settings .*optim.lr: recorded {lr!r}, now {lr * 2!r}"):
        resume.decide(acc, rundir, 1, other)  # named, not as a config_hash that differs
