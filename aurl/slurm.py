"""Small SLURM helpers for slurm/pipeline.sh, slurm/stage.sh and `python -m aurl.train --status`.

- record_jobs / recorded_jobs: the stage job ids of a pipeline, kept with the run's output.
- job_states: what SLURM says about those jobs now (squeue), or None where there is no squeue.
- stage_status: completed / stopped / none for one stage, from the trainer's state file; the stage job
  script decides from it whether to exit 0, requeue, or fail.
- `python -m aurl.slurm record|status|stage-done|stage-status ...`: the same from a shell script.

Nothing here imports torch or accelerate: the batch scripts call it on the head node before any training.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from aurl.atomic import atomic_write_json
from aurl.console import ArgParser, UserError
from aurl.rundir import RunDir


# ---------------------------------------------------------------------------------------------------------
# recorded job ids
# ---------------------------------------------------------------------------------------------------------
def jobs_path(output_dir: str | Path) -> Path:
    return RunDir(output_dir).slurm_jobs


def record_jobs(output_dir: str | Path, jobs: dict[str, str], pipeline_job: str | None = None) -> dict:
    """Record one pipeline submission: stage -> job id. The latest submission is `current`; older ones are
    kept under `history` so a resubmitted pipeline does not lose track of what ran before."""
    path = jobs_path(output_dir)
    record: dict[str, Any] = _read_json(path) or {}
    entry = {"submitted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "pipeline_job": pipeline_job, "stages": {str(k): str(v) for k, v in jobs.items()}}
    history = record.get("history", [])
    if record.get("current"):
        history.append(record["current"])
    record = {"current": entry, "history": history[-20:]}
    atomic_write_json(path, record)
    return record


def recorded_jobs(output_dir: str | Path) -> dict[str, str]:
    """stage -> job id of the latest recorded submission ({} when none)."""
    record = _read_json(jobs_path(output_dir)) or {}
    return dict((record.get("current") or {}).get("stages", {}))


# ---------------------------------------------------------------------------------------------------------
# SLURM's view
# ---------------------------------------------------------------------------------------------------------
def job_states(job_ids: list[str]) -> dict[str, str] | None:
    """job id -> state ("PENDING", "RUNNING", "COMPLETED", ..., with the pending reason when there is one),
    "unknown" for a job SLURM no longer lists. None when squeue is not available here."""
    if shutil.which("squeue") is None:
        return None
    states = {}
    for job in job_ids:  # one at a time: squeue fails as a whole on an id it no longer knows
        try:
            r = subprocess.run(["squeue", "-h", "-t", "all", "-j", str(job), "-o", "%T|%r"],
                               capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            return None
        line = r.stdout.strip().splitlines()[:1]
        if r.returncode != 0 or not line:
            states[str(job)] = "unknown"
            continue
        state, _, reason = line[0].partition("|")
        states[str(job)] = f"{state} ({reason})" if state == "PENDING" and reason not in ("", "None") else state
    return states


def status_lines(output_dir: str | Path) -> list[str]:
    """Lines for --status: each recorded stage job and its SLURM state (empty when none is recorded)."""
    jobs = recorded_jobs(output_dir)
    if not jobs:
        return []
    states = job_states(list(jobs.values()))
    lines = []
    for stage, job in sorted(jobs.items()):
        state = states.get(job, "unknown") if states is not None else "squeue not available"
        lines.append(f"stage {stage}: SLURM job {job}: {state}")
    return lines


# ---------------------------------------------------------------------------------------------------------
# stage progress, from the trainer's state file
# ---------------------------------------------------------------------------------------------------------
def stage_status(output_dir: str | Path, stage: int) -> str:
    """'completed', 'stopped' (stopped early with a committed checkpoint: resume it), or 'none'."""
    state = _read_json(RunDir(output_dir).state_file) or {}
    status = ((state.get("stages") or {}).get(str(stage)) or {}).get("status")
    return status if status in ("completed", "stopped") else "none"


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from e


# ---------------------------------------------------------------------------------------------------------
# command line (for the batch scripts)
# ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = ArgParser(prog="python -m aurl.slurm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("record", help="record the stage job ids of a pipeline submission")
    p.add_argument("--output-dir", required=True)
    p.add_argument("--job", action="append", required=True, metavar="STAGE=ID", help="repeatable")
    p.add_argument("--pipeline-job", default=None, help="the job that submitted them, if any")
    p = sub.add_parser("status", help="the recorded stage jobs and their SLURM state")
    p.add_argument("--output-dir", required=True)
    for name, doc in (("stage-done", "exit 0 when the stage is completed, 1 otherwise"),
                      ("stage-status", "print completed, stopped or none")):
        p = sub.add_parser(name, help=doc)
        p.add_argument("--output-dir", required=True)
        p.add_argument("--stage", type=int, required=True)
    args = parser.parse_args(argv)

    try:
        if args.command == "record":
            jobs = {}
            for item in args.job:
                stage, sep, job = item.partition("=")
                if not sep or not stage or not job:
                    raise UserError(f"--job {item!r}: expected STAGE=ID")
                jobs[stage] = job
            record_jobs(args.output_dir, jobs, args.pipeline_job)
        elif args.command == "status":
            print("\n".join(status_lines(args.output_dir) or ["no SLURM jobs recorded"]))
        elif args.command == "stage-done":
            return 0 if stage_status(args.output_dir, args.stage) == "completed" else 1
        else:
            print(stage_status(args.output_dir, args.stage))
    except UserError as e:
        print(f"[aurl] error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
