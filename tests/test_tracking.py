"""Run tracking for real: W&B offline (one run per stage, grouped by the pipeline run id, its id kept across a
kill -9 and resume), TensorBoard event files per stage, and W&B without a key or disabled never stopping
training. One process, the tiny configs."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from run_helpers import REPO, TINY, kill9_tree, read_state, stage_entry

FAST = ["eval.enabled=false", "checkpoint.every_steps=1"]  # a commit after every step: room to kill mid-stage
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
BASE_ENV.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")

pytestmark = pytest.mark.slow


def train_cmd(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "aurl.train", "--config", str(TINY), "--output-dir", str(out), *extra, *FAST]


def wandb_records(path: Path):
    """The records of a .wandb transaction log, as wandb's own protobuf messages (wandb 0.31 ships no Python
    reader: the file is a 7-byte header, then LevelDB-log framing of wandb_internal_pb2.Record)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    i, chunk, block = 7, b"", 32768
    while i + 7 <= len(data):
        left = block - i % block
        if left < 7:  # a block's tail too short for a header is padding
            i += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[i:i + 7])
        if length == 0 and kind == 0:
            i += left
            continue
        chunk += data[i + 7:i + 7 + length]
        i += 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(chunk)
            chunk = b""
            yield rec


def wandb_run(run_dir: Path) -> dict:
    """run id, group, job type, config keys, history rows and the x-axis of each metric (its step_metric, by
    name or glob) of one offline-run dir."""
    files = list(run_dir.glob("run-*.wandb"))
    assert len(files) == 1, run_dir
    info: dict = {"history": [], "step_metric": {}}
    for rec in wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            info.update(id=rec.run.run_id, group=rec.run.run_group, job_type=rec.run.job_type,
                        config={u.key for u in rec.run.config.update})
        elif kind == "metric":
            info["step_metric"][rec.metric.glob_name or rec.metric.name] = rec.metric.step_metric
        elif kind == "history":
            info["history"].append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                                    for i in rec.history.item})
    return info


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """Three stages with --tracker both (W&B offline), killed with -9 mid stage 2, then the same command."""
    tmp = tmp_path_factory.mktemp("tracked")
    out, wandb_dir = tmp / "run", tmp / "wandb"
    # TMPDIR: wandb's media and artifact temp folders, which a killed process cannot remove, stay in the test's
    # own folder instead of piling up in /tmp (two per suite run before)
    (tmp / "tmp").mkdir()
    env = dict(BASE_ENV, WANDB_MODE="offline", WANDB_DIR=str(wandb_dir), TMPDIR=str(tmp / "tmp"))
    proc = subprocess.Popen(train_cmd(out, "--tracker", "both"), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    end, hit = time.time() + 240, False
    while time.time() < end and proc.poll() is None:
        e = stage_entry(out, 2)
        if e.get("status") == "running" and e.get("last_checkpoint") and e.get("wandb_run_id"):
            hit = True
            break
        time.sleep(0.01)
    kill9_tree(proc.pid)  # the trainer and wandb's service process
    proc.wait()
    assert hit, "never reached a commit in stage 2"
    killed = stage_entry(out, 2)
    r = subprocess.run(train_cmd(out, "--tracker", "both"), cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return out, wandb_dir, killed


def test_wandb_offline_one_run_per_stage_id_kept_across_resume(tracked_run):
    out, wandb_dir, killed = tracked_run
    state = read_state(out)
    ids = {s: state["stages"][s]["wandb_run_id"] for s in "123"}
    assert len(set(ids.values())) == 3 and all(ids.values())
    assert ids["2"] == killed["wandb_run_id"]  # the resumed stage 2 logged into the same W&B run
    # offline-run-<time>-<id>: the killed attempt's dir holds only what wandb's service had flushed before
    # the kill (often nothing), so the records are read from each id's last (finished) attempt
    dirs: dict[str, list[Path]] = {}
    for run_dir in sorted((wandb_dir / "wandb").glob("offline-run-*")):
        dirs.setdefault(run_dir.name.rsplit("-", 1)[1], []).append(run_dir)
    assert set(dirs) == set(ids.values())
    assert len(dirs[ids["2"]]) == 2  # the killed attempt and the resumed one: two offline dirs, one id
    runs = {run_id: wandb_run(found[-1]) for run_id, found in dirs.items()}
    for s, run_id in ids.items():
        last = runs[run_id]
        assert last["id"] == run_id
        assert last["group"] == state["run_id"] and last["job_type"] == f"stage{s}"
        assert {"model", "optim", "train", "data"} <= last["config"]
        # every metric is plotted against the logged optimizer step, not W&B's own counter (a resumed stage
        # logs steps again that W&B's counter would drop)
        assert last["step_metric"].get("*") == "step", last["step_metric"]
        total = state["stages"][s]["total_steps"]
        train_steps = {h["step"] for h in last["history"] if "train/loss" in h}
        val_steps = {h["step"] for h in last["history"] if "val/loss" in h}
        # the resumed attempt logs from its checkpoint on; the others from step 1
        first = killed["step"] + 1 if s == "2" else 1
        assert train_steps == set(range(first, total + 1)), (s, train_steps)
        assert total in val_steps
    # the same numbers as metrics.jsonl (the last record of each step wins, as on a W&B chart)
    jsonl = {}
    for line in (out / "logs" / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            jsonl[(rec["stage"], rec["step"])] = rec["loss"]
    for s, run_id in ids.items():
        for h in runs[run_id]["history"]:
            if "train/loss" in h:
                assert h["train/loss"] == pytest.approx(jsonl[(int(s), h["step"])])


def test_tensorboard_event_files_per_stage(tracked_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _, _ = tracked_run
    state = read_state(out)
    for s in (1, 2, 3):
        acc = EventAccumulator(str(out / "logs" / "tensorboard" / f"stage{s}"))
        acc.Reload()
        tags = set(acc.Tags()["scalars"])
        assert {"train/loss", "train/lr", "val/loss", "val/best"} <= tags, (s, tags)
        steps = {e.step for e in acc.Scalars("train/loss")}
        assert steps == set(range(1, state["stages"][str(s)]["total_steps"] + 1)), (s, steps)
    assert {"train/d/loss", "train/g/adv"} <= set(EventAccumulator(str(out / "logs" / "tensorboard" / "stage3"))
                                                  .Reload().Tags()["scalars"])


@pytest.mark.parametrize("mode", ["unset", "disabled"])
def test_wandb_without_key_or_disabled_never_stops_training(tmp_path, mode):
    out, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    env = dict(BASE_ENV, WANDB_DIR=str(wandb_dir), HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    if mode == "disabled":
        env["WANDB_MODE"] = "disabled"
    t0 = time.time()
    r = subprocess.run(train_cmd(out, "--tracker", "wandb", "--stage", "1", "train.max_steps=2"), cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert time.time() - t0 < 120  # no network wait
    assert stage_entry(out, 1)["status"] == "completed"
    offline = list((wandb_dir / "wandb").glob("offline-run-*"))
    if mode == "unset":
        warnings = [line for line in r.stderr.splitlines() if "no API key" in line]
        assert len(warnings) == 1 and "offline" in warnings[0]
        assert len(offline) == 1 and wandb_run(offline[0])["id"] == stage_entry(out, 1)["wandb_run_id"]
    else:
        assert not offline
