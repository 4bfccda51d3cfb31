"""A stand-in for `python -m aurl.train` that the SLURM script tests run under a stub `accelerate`.

It follows the trainer's side of the contract that slurm/stage.sh relies on, in a few seconds and without
torch: SIGUSR1 only sets a flag; the stop happens at a step boundary after a committed checkpoint; rank 0
writes `stages.<N>.status` ("stopped" or "completed") into training_state.json; a stop exits 75; a resume
starts from the committed step. Each start and end is appended to <output-dir>/events.log for the test.
Knobs: FAKE_RANK (the machine rank, set by the stub), FAKE_STEPS (steps per stage), FAKE_STEP_SECONDS,
FAKE_DEADLINE_MARGIN (stop that many seconds before SLURM_JOB_END_TIME, in the job's first run only).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

STOPPED_EXIT = 75


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--stage", type=int, required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--config")
    p.add_argument("--resume", action="store_true")
    args, _ = p.parse_known_args()
    if args.config and not Path(args.config).exists():
        print(f"error: --config {args.config}: no such file", file=sys.stderr)
        return 2

    stop = False

    def on_usr1(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGUSR1, on_usr1)
    rank = int(os.environ.get("FAKE_RANK", "0"))
    out = Path(args.output_dir)
    ckpt = out / "checkpoints" / f"stage{args.stage}"
    committed = ckpt / "step.txt"
    step = int(committed.read_text()) if committed.exists() else 0  # resume is automatic, as in aurl.train
    steps = int(os.environ.get("FAKE_STEPS", "12"))
    event(out, f"start stage={args.stage} rank={rank} step={step} node={os.environ.get('SLURMD_NODENAME')} "
          f"end={os.environ.get('SLURM_JOB_END_TIME')}")

    # The trainer's deadline: stop this many seconds before the job's end (first run only, so the test ends).
    margin = float(os.environ.get("FAKE_DEADLINE_MARGIN", "0"))
    first_run = os.environ.get("SLURM_RESTART_COUNT", "0") == "0"
    while step < steps:
        time.sleep(float(os.environ.get("FAKE_STEP_SECONDS", "0.25")))
        step += 1
        end = os.environ.get("SLURM_JOB_END_TIME")
        if margin and first_run and end and int(end) - time.time() < margin:
            stop = True
        if rank == 0:
            ckpt.mkdir(parents=True, exist_ok=True)
            write(committed, str(step))
        if stop:
            if rank == 0:
                set_status(out, args.stage, "stopped", step)
            else:
                barrier(out, args.stage, "stopped")
            event(out, f"stopped stage={args.stage} rank={rank} step={step}")
            return STOPPED_EXIT
    if rank == 0:
        set_status(out, args.stage, "completed", step)
    else:
        barrier(out, args.stage, "completed")
    event(out, f"completed stage={args.stage} rank={rank} step={step}")
    return 0


def set_status(out: Path, stage: int, status: str, step: int) -> None:
    path = out / "training_state.json"
    state = json.loads(path.read_text()) if path.exists() else {}
    state.setdefault("stages", {})[str(stage)] = {"status": status, "step": step}
    write(path, json.dumps(state))


def barrier(out: Path, stage: int, status: str) -> None:
    """The trainer's barrier after rank 0's state-file update: a rank that exits non-zero earlier would make
    `srun --kill-on-bad-exit` kill rank 0 before it records the stop."""
    path = out / "training_state.json"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if path.exists() and json.loads(path.read_text()).get("stages", {}).get(str(stage), {}).get("status") == status:
            return
        time.sleep(0.05)


def write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}.{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def event(out: Path, line: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "events.log", "a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
    sys.exit(main())
