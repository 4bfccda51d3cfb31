"""outputs/training_state.json: the run's progress, owned by rank 0.

Written atomically (temp file, fsync, rename) with the previous version kept as training_state.json.bak.
A corrupt file is reported with the .bak offered; a state recorded under another config, dataset or world
size is refused naming what differs. A lock file (flock, released by the kernel when the process dies)
marks a live run for --clear and --status.

The resume rule, stated once: a stage resumes from its last committed checkpoint only if every setting that
decides what the uninterrupted run would have computed is unchanged -- its weights, its validation values,
its best model and where it stops. Each stage records its config as flat `section.key` values ("settings")
and a resume with another value is refused, naming the key and both values (train.epochs and
train.max_steps set the cosine schedule's length; lr, warmup, batch, accumulation, seq_len, seed, model,
augmentation, patience and validation likewise change the run). What may change (RESUME_FREE_KEYS): where the
data and cache live (the data fingerprint still guards their content), DataLoader workers, the SLURM stop
margin, train.compile and train.activation_checkpointing (how, not what, it computes: the same function up to
float rounding), and the logging, checkpoint and eval sections (output, when commits happen, the stage-end report).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from aurl.atomic import atomic_write_json
from aurl.console import UserError
from aurl.rundir import LOCK_FILE, STATE_FILE, RunDir  # noqa: F401 -- the file names, known as st.*
from aurl.train.elastic import recorded_global_batch, split_refusal

SCHEMA_VERSION = 1
# what StageTrainer writes: "running" while it trains, then "completed" or "stopped" (preempted, committed);
# a killed run stays "running" (its lock is free: --status shows it not live)
STAGE_STATUSES = ("pending", "running", "stopped", "completed")
# recorded per stage; a resume must see the same values (a plain ZeRO/DDP checkpoint cannot change them)
# (the number of processes, and with it the micro-batch and accumulation, may change: aurl.train.elastic keeps the
# global batch and the sample order; check_resumable refuses only a world size with no exact split)
RESUME_KEYS = ("seed", "data_fingerprint", "config_hash")
# also compared when recorded: None without DeepSpeed (a ZeRO checkpoint has another layout than a DDP one)
LAYOUT_KEYS = ("zero_stage",)
# config keys (a whole section by its name) a resume may change: they do not change what the run computes
RESUME_FREE_KEYS = ("data.data_dir", "data.cache_dir", "data.num_workers", "train.stop_margin_s",
                    "train.compile", "train.activation_checkpointing", "logging", "checkpoint", "eval")
# replaced by a stage's recorded settings, which name the key that differs
NAMED_BY_SETTINGS = ("config_hash",)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def state_path(out_dir: str | Path) -> Path:
    return RunDir(out_dir).state_file


def new_state() -> dict:
    return {"schema_version": SCHEMA_VERSION, "current_stage": None, "created_at": now(), "updated_at": now(),
            "run_id": f"aurl-{int(time.time())}-{os.getpid()}", "stages": {}}


def new_stage_entry(**run: Any) -> dict:
    entry = {"status": "pending", "epoch": 0, "step": 0, "batch": 0, "total_steps": None,
             "best_val_loss": None, "best_checkpoint": None, "last_checkpoint": None,
             "tokens_per_s": None, "eta_s": None, "started_at": now(), "updated_at": now()}
    entry.update(run)
    return entry


def read_state(out_dir: str | Path) -> dict | None:
    """The state (None when there is none). Corrupt -> UserError that offers the .bak."""
    path = state_path(out_dir)
    if not path.exists():
        return None
    try:
        state = json.loads(path.read_text())
        check_schema(state)
        return state
    except (ValueError, KeyError, TypeError, AssertionError) as e:
        bak = path.with_name(path.name + ".bak")
        offer = (f" The previous version is in {bak}: to go on from it, run `cp {bak} {path}`; "
                 "or remove the run with --clear.") if bak.exists() else " Remove the run with --clear."
        raise UserError(f"{path} is corrupt ({type(e).__name__}: {e}).{offer}") from e


def check_schema(state: Any) -> None:
    if not isinstance(state, dict):
        raise ValueError("not a JSON object")
    if state.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"schema_version {state.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    if not isinstance(state.get("stages"), dict):
        raise ValueError("no 'stages' object")
    for name, entry in state["stages"].items():
        if not name.isdigit() or not isinstance(entry, dict) or entry.get("status") not in STAGE_STATUSES:
            raise ValueError(f"stage {name!r}: bad entry")
        for key in ("epoch", "step", "batch"):
            if not isinstance(entry.get(key), int):
                raise ValueError(f"stage {name}: {key} is not an integer")


def write_state(out_dir: str | Path, state: dict) -> None:
    """Atomic write; the file it replaces becomes .bak."""
    path = state_path(out_dir)
    state["updated_at"] = now()
    check_schema(state)
    if path.exists():
        try:
            check_schema(json.loads(path.read_text()))  # never let a corrupt file overwrite a good .bak
            shutil.copy2(path, path.with_name(path.name + ".bak"))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    atomic_write_json(path, state)


def resume_settings(cfg) -> dict[str, Any]:
    """{"section.key": value} of every config key a resume must not change (see the module docstring)."""
    out = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            if section not in RESUME_FREE_KEYS and f"{section}.{key}" not in RESUME_FREE_KEYS:
                out[f"{section}.{key}"] = value
    return out


def check_resumable(entry: dict, run: dict, stage: int, checkpoint: str | Path | None = None) -> None:
    """Refuse to resume a stage recorded under other settings, naming each difference and the way out.
    Only keys present in both are compared (a state file written before `settings` were recorded falls back
    on config_hash; a check before the data is opened has no data_fingerprint yet).

    Another number of processes resumes (aurl.train.elastic) when it divides the stage's global batch
    (micro_batch x grad_accum x world_size as recorded); otherwise the refusal names the counts that do."""
    keys = RESUME_KEYS + LAYOUT_KEYS
    diffs = []
    if "settings" in entry and "settings" in run:
        keys = tuple(k for k in keys if k not in NAMED_BY_SETTINGS)
        old, new = entry["settings"], run["settings"]
        diffs = [f"{k}: recorded {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                 if old.get(k) != new.get(k)]
    diffs = [f"{k}: recorded {entry.get(k)!r}, now {run.get(k)!r}" for k in keys
             if k in entry and k in run and entry.get(k) != run.get(k)] + diffs
    if not diffs:
        g = recorded_global_batch(entry)
        refusal = split_refusal(g, run["world_size"], entry["world_size"], stage) if g and "world_size" in run else None
        if refusal:
            raise UserError(refusal)
        return
    fix = "Use the recorded values to resume, or start over with --clear."
    raise UserError(f"stage {stage} was started with other settings and cannot resume: " + "; ".join(diffs)
                    + ". " + fix)


# ---------------------------------------------------------------------------------------------------------
# lock: held by rank 0 for the life of a run
# ---------------------------------------------------------------------------------------------------------
class RunLock:
    def __init__(self, out_dir: str | Path):
        self.path = RunDir(out_dir).lock_file
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"another run is live in {self.path.parent} ({holder(self.path.parent)}); "
                            "wait for it or stop it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": now()}).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def is_live(out_dir: str | Path) -> bool:
    """True while some process holds the run lock (a killed run's lock is free at once)."""
    path = RunDir(out_dir).lock_file
    if not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def holder(out_dir: str | Path) -> str:
    try:
        info = json.loads(RunDir(out_dir).lock_file.read_text())
        return f"pid {info['pid']} on {info['host']} since {info['since']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
