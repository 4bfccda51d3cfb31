"""SLURM: the pipeline and stage jobs on a real two-node cluster started by the tests (slurm_cluster.py).

Each stage job runs across node1 and node2 (one accelerate launcher per node, one CPU process each, gloo).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest
from run_helpers import step_losses
from slurm_cluster import slurm_cluster  # noqa: F401 - the fixture

from aurl import slurm

REPO = Path(__file__).resolve().parents[1]


# the tiny per-stage configs as an AURL_CONFIG pattern ("{stage}" = the stage number)
TINY_CONFIG = str(REPO / "configs" / "training_configs" / "tiny" / "tiny_stage{stage}.yaml")


def _env(cluster, out: Path, **knobs) -> dict[str, str]:
    env = dict(cluster.env, AURL_NODES="2", AURL_GPUS_PER_NODE="0", AURL_TIME="00:10:00",
               AURL_OUTPUT_DIR=str(out))
    env.update({k: str(v) for k, v in knobs.items()})
    return env


def _wait_for_checkpoint(out: Path, stage: int, job: str, timeout: float) -> None:
    """Until the stage has committed a checkpoint: it is then in the middle of its training."""
    folder = out / "checkpoints" / f"stage{stage}"
    deadline = time.monotonic() + timeout
    while not (folder.is_dir() and any(folder.iterdir())):
        if time.monotonic() > deadline:
            raise AssertionError(f"no checkpoint in {folder} after {timeout} s:\n{_stage_log(out, stage, job)}")
        time.sleep(0.2)


def _stage_log(out: Path, stage: int, job: str) -> str:
    path = out / "logs" / "slurm" / f"aurl-stage{stage}-{job}.out"
    return path.read_text(errors="replace") if path.exists() else f"(no log {path})"


def _finished(cluster, out: Path, stage: int, job: str, timeout: float) -> dict[str, str]:
    info = cluster.wait(job, timeout=timeout)
    assert info["JobState"] == "COMPLETED", f"{info}\n{_stage_log(out, stage, job)}"
    return info


@pytest.mark.slow
def test_cluster_runs_a_job_across_both_nodes(slurm_cluster, tmp_path):  # noqa: F811
    script = tmp_path / "two_nodes.sh"
    script.write_text("#!/bin/bash\nsrun --nodes 2 --ntasks-per-node 1 bash -c 'echo $SLURMD_NODENAME $SLURM_NODEID'\n")
    job = slurm_cluster.run("sbatch", "--parsable", "--nodes", "2", "--ntasks-per-node", "1",
                            f"--output={tmp_path}/%j.out", str(script), cwd=tmp_path).stdout.strip()
    info = slurm_cluster.wait(job, timeout=60)
    assert info["JobState"] == "COMPLETED", info
    lines = sorted((tmp_path / f"{job}.out").read_text().split("\n"))
    assert [ln for ln in lines if ln] == ["node1 0", "node2 1"]


@pytest.fixture
def stub_trainer(tmp_path) -> dict[str, str]:
    """Environment knobs that make the stage jobs run slurm_fake_trainer.py through a stub `accelerate` (same
    process tree: the launcher and its worker child, USR1 ignored in the launcher), in seconds, no torch."""
    bin_dir = tmp_path / "stub-bin"
    bin_dir.mkdir()
    stub = bin_dir / "accelerate"
    stub.write_text(f"""#!/bin/bash
# accelerate launch [flags] -m aurl.train ARGS -> the fake trainer with this node's machine rank
rank=0
while [ $# -gt 0 ]; do
    case "$1" in --machine_rank) rank="$2"; shift 2 ;; -m) shift 2; break ;; *) shift ;; esac
done
# torchrun reports any failed worker as exit status 1 (a worker's 75 included), so does this stub
FAKE_RANK="$rank" {sys.executable} {Path(__file__).parent / "slurm_fake_trainer.py"} "$@" || exit 1
""")
    stub.chmod(0o755)
    return {"AURL_SKIP_ENV": "1", "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _events(out: Path) -> list[str]:
    return (out / "events.log").read_text().splitlines() if (out / "events.log").exists() else []


@pytest.mark.slow
def test_failing_stage_cancels_its_dependents_with_a_stub_trainer(slurm_cluster, tmp_path, stub_trainer):  # noqa: F811
    out = tmp_path / "run"
    env = _env(slurm_cluster, out, AURL_CONFIG=str(tmp_path / "missing_stage{stage}.yaml"), **stub_trainer)
    ids = slurm_cluster.run("bash", str(REPO / "slurm" / "pipeline.sh"), env=env, cwd=tmp_path).stdout.split()
    assert len(ids) == 3
    info = slurm_cluster.wait(ids[0], timeout=60)
    assert info["JobState"] == "FAILED" and info["Restarts"] == "0", info
    for job in ids[1:]:
        assert slurm_cluster.wait(job, timeout=30)["JobState"] == "CANCELLED"


@pytest.mark.slow
def test_deadline_stop_without_a_signal_requeues_with_a_stub_trainer(slurm_cluster, tmp_path, stub_trainer):  # noqa: F811
    """The trainer stops by itself before the job's end (here: a margin longer than the time limit, so at its
    first step; no signal; accelerate exits 1): the state file says
    "stopped", so the stage job requeues itself and the next run completes the stage."""
    out = tmp_path / "run"
    env = _env(slurm_cluster, out, FAKE_DEADLINE_MARGIN="3600", **stub_trainer)
    job = slurm_cluster.run("sbatch", "--parsable", "--nodes", "2", "--time", "00:10:00", "--requeue",
                            f"--output={tmp_path}/%x-%j.out", str(REPO / "slurm" / "stage.sh"), "1",
                            env=env, cwd=tmp_path).stdout.strip()
    info = slurm_cluster.wait(job, timeout=60)
    log = (tmp_path / f"aurl-stage-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", log
    assert re.search(r"srun exited with [1-9]\d*; stage status: stopped", log) and "requeueing job" in log, log
    assert [e.split()[0] for e in _events(out) if "rank=0" in e] == ["start", "stopped", "start", "completed"]


@pytest.mark.slow
def test_pipeline_runs_three_stages_in_order_and_survives_preemption(slurm_cluster, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "run"
    # Stage 2 long enough (20 steps, a checkpoint every 2) that the USR1 below lands in its middle; 1 and 3 tiny.
    env = _env(slurm_cluster, out, AURL_CONFIG=TINY_CONFIG,
               AURL_TRAIN_ARGS="stage2.train.epochs=20 stage2.train.max_steps=20 stage2.checkpoint.every_steps=2 "
                                   "eval.enabled=false")
    r = slurm_cluster.run("sbatch", "--parsable", f"--output={tmp_path}/pipeline-%j.out",
                          str(REPO / "slurm" / "pipeline.sh"), env=env, cwd=tmp_path)
    pipeline = r.stdout.strip()
    assert slurm_cluster.wait(pipeline, timeout=60)["JobState"] == "COMPLETED", \
        (tmp_path / f"pipeline-{pipeline}.out").read_text()
    jobs = slurm.recorded_jobs(out)
    assert sorted(jobs) == ["1", "2", "3"]
    printed = (tmp_path / f"pipeline-{pipeline}.out").read_text().split()
    assert [jobs[s] for s in "123"] == printed[-3:]

    # Preempt stage 2 in the middle: SIGUSR1 to the batch shell only, as `--signal=B:USR1@N` would.
    _finished(slurm_cluster, out, 1, jobs["1"], timeout=120)
    _wait_for_checkpoint(out, 2, jobs["2"], timeout=90)
    slurm_cluster.run("scancel", "--signal=USR1", "--batch", jobs["2"])
    for stage in "23":
        _finished(slurm_cluster, out, int(stage), jobs[stage], timeout=120)

    infos = {s: slurm_cluster.job(jobs[s]) for s in "123"}
    assert infos["2"]["Restarts"] == "1" and infos["1"]["Restarts"] == "0", _stage_log(out, 2, jobs["2"])
    for s in "123":
        assert infos[s]["NodeList"] == "node[1-2]", infos[s]
    assert infos["1"]["EndTime"] <= infos["2"]["StartTime"] and infos["2"]["EndTime"] <= infos["3"]["StartTime"]
    log2 = _stage_log(out, 2, jobs["2"])
    assert "requeueing job" in log2 and log2.count("restart 1") >= 1, log2
    assert all(slurm.stage_status(out, s) == "completed" for s in (1, 2, 3))
    state = json.loads((out / "training_state.json").read_text())
    assert all(state["stages"][s]["world_size"] == 2 for s in "123")  # one rank on each node

    # A completed stage's job, submitted again, exits 0 at once (stage jobs are idempotent).
    resubmitted = slurm_cluster.run("sbatch", "--parsable", "--nodes", "2", f"--output={tmp_path}/%x-%j.out",
                                    str(REPO / "slurm" / "stage.sh"), "3", env=env, cwd=tmp_path).stdout.strip()
    assert slurm_cluster.wait(resubmitted, timeout=60)["JobState"] == "COMPLETED"
    assert "already completed" in (tmp_path / f"aurl-stage-{resubmitted}.out").read_text()
    monkeypatch.setenv("SLURM_CONF", slurm_cluster.env["SLURM_CONF"])
    assert slurm.status_lines(out) == [f"stage {s}: SLURM job {jobs[s]}: COMPLETED" for s in "123"]

    # The preempted stage 2 ends where an uninterrupted one ends: the same stage 2 (world size 2, from the same
    # stage-1 weights) run again without a stop, by a local two-process launch, logs the same losses.
    import shutil
    import subprocess

    again = tmp_path / "uninterrupted"
    shutil.copytree(out, again, ignore=shutil.ignore_patterns("training.lock", "stage2", "stage3", "metrics.jsonl"))
    state = json.loads((again / "training_state.json").read_text())
    state["stages"] = {"1": state["stages"]["1"]}
    (again / "training_state.json").write_text(json.dumps(state))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "aurl.train", "--config", TINY_CONFIG, "--output-dir", str(again), "--stage", "2",
           *env["AURL_TRAIN_ARGS"].split()]
    r = subprocess.run(cmd, cwd=REPO, env={**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    def stage2_losses(run: Path) -> dict:  # a step replayed after the requeue keeps its later record
        return {k: v for k, v in step_losses(run).items() if k[0] == 2}

    preempted, uninterrupted = stage2_losses(out), stage2_losses(again)
    assert preempted.keys() == uninterrupted.keys() and len(preempted) >= 20
    for k in preempted:
        assert preempted[k] == pytest.approx(uninterrupted[k], rel=1e-5, abs=1e-6), k


def test_record_jobs_keeps_earlier_submissions(tmp_path):
    slurm.record_jobs(tmp_path, {"1": "10", "2": "11"})
    slurm.record_jobs(tmp_path, {"2": "20"}, pipeline_job="19")
    assert slurm.recorded_jobs(tmp_path) == {"2": "20"}
    record = json.loads((tmp_path / slurm.JOBS_FILE).read_text())
    assert record["current"]["pipeline_job"] == "19" and record["history"][0]["stages"] == {"1": "10", "2": "11"}
    assert slurm.main(["record", "--output-dir", str(tmp_path), "--job", "bad"]) == 2


def test_status_without_squeue_and_stage_status(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert slurm.status_lines(tmp_path) == [] and slurm.job_states(["1"]) is None
    slurm.record_jobs(tmp_path, {"1": "7"})
    assert slurm.status_lines(tmp_path) == ["stage 1: SLURM job 7: squeue not available"]
    (tmp_path / "training_state.json").write_text(json.dumps({"stages": {"1": {"status": "completed"}}}))
    assert slurm.main(["stage-done", "--output-dir", str(tmp_path), "--stage", "1"]) == 0
    assert slurm.main(["stage-done", "--output-dir", str(tmp_path), "--stage", "2"]) == 1
    slurm.main(["stage-status", "--output-dir", str(tmp_path), "--stage", "2"])
    assert capsys.readouterr().out.strip() == "none"
