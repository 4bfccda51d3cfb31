"""What the tests that start the real trainer share: where things are, reading a run folder, killing a run.

Imported by name (tests/ is on sys.path under pytest's default import mode), like midi_factory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "training_configs" / "tiny"


def read_state(out: Path) -> dict:
    return json.loads((out / "training_state.json").read_text())


def stage_entry(out: Path, stage: int) -> dict:
    """The stage's entry of the state file; {} while there is none (or the file is being replaced)."""
    try:
        return read_state(out)["stages"].get(str(stage)) or {}
    except (OSError, ValueError, KeyError):
        return {}


def step_losses(out: Path) -> dict:
    """(stage, step, split) -> loss; a step replayed after a resume keeps its later record."""
    recs = {}
    for line in (out / "logs" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs[(r["stage"], r["step"], r["split"])] = r["loss"]
    return recs


def wait_for(pred, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    """Poll pred() until it holds (True), the process ends or the time is up (False)."""
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    return False


def descendants(pid: int) -> list[int]:
    """pid and every process below it (torch elastic starts each rank in a new session, and wandb its
    service: a process-group kill would leave them running)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def kill9_tree(pid: int) -> list[int]:
    """SIGKILL a process and everything below it at once (kill -9 of a whole run); returns the pids."""
    tree = descendants(pid)
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return tree
