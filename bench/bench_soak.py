"""Kill -9 soak (a bench, not CI): the training pipeline SIGKILLed at random moments, resumed each time with the
same command, then compared tensor by tensor with an uninterrupted run of the same config.

    python bench/bench_soak.py [--kills 20] [--seed 0] [--config DIR] [--out DIR] [--keep] [KEY=VALUE ...]
    python bench/bench_soak.py --fast          # tiny configs, 4 kills: a smoke run (tests/test_bench.py)

1. The reference: `python -m aurl.train --config C --output-dir OUT/reference [KEY=VALUE ...]`, uninterrupted.
   It also measures how long each stage takes, to place the kills.
2. The soak: the very same command on OUT/soak, killed `--kills` times (SIGKILL to its whole process group),
   each time started again with the same command, until it finishes. The kills follow a seeded plan spread
   over the three stages: "time" kills a random delay after the stage is seen running in that attempt;
   "save" kills a few ms after a checkpoint's staging dir appears (inside the commit protocol, or just after
   it); "between" kills in the seconds after a stage is recorded completed (copying the best model, the
   stage-end evaluation, the next stage's start). Every kill is triggered by what the attempt itself did, so
   none is wasted on the start-up of the Python process.
3. The comparison: the `model_state` tensors of checkpoints/best_model.pt and of every stage's best.pt, and the
   files' metrics and extra (which step was best, its validation NLL), bitwise; and every loss record the
   soak logged (replays included) against the reference's record of the same stage, step and split.

Both runs get logging.log_every_steps=1 (every step in logs/metrics.jsonl: exact replay counts; logging does not
change what is computed). Prints kills, resumes, steps replayed, loss records and tensors equal / compared.
Exit code 0 when every planned kill happened and everything compared equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "training_configs"
STAGES = (1, 2, 3)
MODEL_FILES = ("checkpoints/best_model.pt", *(f"checkpoints/stage{s}/best.pt" for s in STAGES))
RESUMED = re.compile(r"\[stage (\d)\] resuming from \S+ \(epoch \d+, batch \d+, step (\d+)\)")
POLL_S = 0.002  # a save of the quickstart model takes tens of ms: poll well below that


@dataclass
class Kill:
    kind: str  # "time", "save" or "between" (see the module docstring)
    stage: int
    delay_s: float


@dataclass
class Attempt:
    rc: int | None  # None = killed by us
    seconds: float
    log: Path
    new_records: list[dict]
    fired: Kill | None = None
    in_save: bool = False  # a staging dir existed at the moment of the kill
    landed: str = ""  # "stage N" (training it) or "after stage N" (recorded completed, next not yet running)
    stage_seen: dict[int, float] = field(default_factory=dict)  # stage -> seconds until seen running
    stage_done: dict[int, float] = field(default_factory=dict)  # stage -> seconds until seen completed


# ---------------------------------------------------------------------------------------------------------
# watching one attempt
# ---------------------------------------------------------------------------------------------------------
class Watch:
    """What an attempt has done so far, from its files: the state file (only versions written by this
    attempt count) and the checkpoints' staging dirs."""

    def __init__(self, out: Path, started_ns: int):
        self.out, self.started_ns = out, started_ns
        self.state: dict = {}
        self._mtime = 0

    def refresh(self) -> None:
        path = self.out / "training_state.json"
        try:
            mtime = path.stat().st_mtime_ns
            if mtime != self._mtime and mtime >= self.started_ns:
                self.state, self._mtime = json.loads(path.read_text()), mtime
        except (OSError, ValueError):  # not there yet, or being replaced
            pass

    def current_stage(self) -> int:
        return self.state.get("current_stage") or 0

    def completed(self, stage: int) -> bool:
        return (self.state.get("stages", {}).get(str(stage)) or {}).get("status") == "completed"

    def staging(self) -> bool:
        """A save of this attempt is being written: a staging dir changed since the attempt started (one left
        by a save an earlier attempt was killed in stays until the next commit cleans it up)."""
        for stage in STAGES:
            try:
                for e in os.scandir(self.out / "checkpoints" / f"stage{stage}"):
                    if e.name.startswith(".staging-") and e.stat().st_mtime_ns >= self.started_ns:
                        return True
            except OSError:  # no such stage yet, or the dir was renamed or purged while we looked
                continue
        return False


def _fires(kill: Kill, w: Watch, armed_at: float | None, now: float) -> tuple[bool, float | None]:
    """(kill now?, the moment the kill's delay started counting). A kill whose stage is seen completed before
    its own trigger fires at once: a stage resumed after its last commit may end without another save."""
    if armed_at is None:
        if kill.kind != "between" and w.completed(kill.stage):
            return True, now
        if kill.kind == "between":
            ready = w.completed(kill.stage)
        elif kill.kind == "save":
            ready = w.current_stage() >= kill.stage and w.staging()
        else:
            ready = w.current_stage() >= kill.stage
        if not ready:
            return False, None
        armed_at = now
    return now - armed_at >= kill.delay_s, armed_at


def run_attempt(cmd: list[str], out: Path, log: Path, kill: Kill | None, timeout_s: float) -> Attempt:
    metrics = out / "logs" / "metrics.jsonl"
    offset = metrics.stat().st_size if metrics.exists() else 0
    t0, started_ns = time.monotonic(), time.time_ns()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    w = Watch(out, started_ns)
    result = Attempt(rc=None, seconds=0.0, log=log, new_records=[])
    armed_at = None
    while proc.poll() is None:
        now = time.monotonic()
        if now - t0 > timeout_s:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise SystemExit(f"soak: an attempt ran past {timeout_s:.0f} s; its output is in {log}")
        w.refresh()
        for stage in STAGES:
            if w.current_stage() == stage and stage not in result.stage_seen:
                result.stage_seen[stage] = now - t0
            if w.completed(stage) and stage not in result.stage_done:
                result.stage_done[stage] = now - t0
        if kill is not None:
            fire, armed_at = _fires(kill, w, armed_at, now)
            if fire:
                cur = w.current_stage()
                result.in_save = w.staging()
                result.landed = f"after stage {cur}" if w.completed(cur) else f"stage {cur}"
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                result.fired = kill
                break
        time.sleep(POLL_S)
    result.rc = None if result.fired else proc.returncode
    result.seconds = time.monotonic() - t0
    if metrics.exists():
        with open(metrics) as f:
            f.seek(offset)
            result.new_records = [json.loads(line) for line in f.read().splitlines() if line.strip()]
    return result


# ---------------------------------------------------------------------------------------------------------
# the plan, the runs, the comparison
# ---------------------------------------------------------------------------------------------------------
def plan_kills(n: int, stage_seconds: dict[int, float], rng: random.Random) -> list[Kill]:
    """n kills in pipeline order: ~n/3 in each stage (alternating "save" and "time", from a random start),
    and one "between" after stage 1 and one after stage 2 (one only, after stage 1, when n < 6)."""
    n_between = 2 if n >= 6 else (1 if n >= 2 else 0)
    per_stage = {s: (n - n_between) // 3 + (1 if i < (n - n_between) % 3 else 0) for i, s in enumerate(STAGES)}
    plan = []
    for stage in STAGES:
        k = per_stage[stage]
        kinds = ["save", "time"] if rng.random() < 0.5 else ["time", "save"]
        for i in range(k):
            kind = kinds[i % 2]
            # "time": spread over the stage's length, so that every planned kill comes before the stage ends
            delay = rng.uniform(0.15, 1.0) * stage_seconds[stage] / (k + 1) if kind == "time" else rng.uniform(0, 0.01)
            plan.append(Kill(kind, stage, round(delay, 3)))
        if stage < 3 and stage <= n_between:
            plan.append(Kill("between", stage, round(rng.uniform(0.0, 2.0), 3)))
    return plan


def compare_models(ref: Path, soak: Path) -> tuple[int, int, int, list[str]]:
    """(tensors equal, tensors compared, files whose best step or val NLL differ, a line per file)."""
    equal = compared = other_best = 0
    lines = []
    for rel in MODEL_FILES:
        a = torch.load(ref / rel, map_location="cpu", weights_only=True)
        b = torch.load(soak / rel, map_location="cpu", weights_only=True)
        sa, sb = a["model_state"], b["model_state"]
        same = sum(1 for k in sa if k in sb and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]))
        n = len(sa.keys() | sb.keys())
        equal, compared = equal + same, compared + n
        meta_same = (a["metrics"], a["extra"]) == (b["metrics"], b["extra"])
        other_best += not meta_same
        lines.append(f"  {rel}: tensors equal {same}/{n}; best step {b['extra'].get('step')} and val NLL "
                     f"{'the same' if meta_same else 'DIFFERENT: ' + str((a['metrics'], a['extra']))}")
    return equal, compared, other_best, lines


def loss_records(records: list[dict]) -> dict[tuple, float]:
    return {(r["stage"], r["step"], r["split"]): r["loss"] for r in records}


def replayed_steps(attempts: list[Attempt]) -> dict[int, int]:
    """Per stage: optimizer steps a killed attempt ran beyond where the next attempt started that stage."""
    replayed = {s: 0 for s in STAGES}
    for killed, nxt in zip(attempts, attempts[1:], strict=False):  # each killed attempt and its successor
        reached: dict[int, int] = {}
        for r in killed.new_records:
            if r["split"] == "train":
                reached[r["stage"]] = max(reached.get(r["stage"], 0), r["step"])
        if not reached:
            continue
        stage = max(reached)
        resumed = {int(s): int(k) for s, k in RESUMED.findall(nxt.log.read_text())}
        nxt_steps = [r["step"] for r in nxt.new_records if r["stage"] == stage and r["split"] == "train"]
        start = resumed.get(stage, 0 if nxt_steps else reached[stage])  # no steps and no resume: it was done
        replayed[stage] += max(0, reached[stage] - start)
    return replayed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="passed to both runs (e.g. train.max_steps=60)")
    p.add_argument("--fast", action="store_true", help="tiny configs and 4 kills: a smoke run of this bench")
    p.add_argument("--config", type=Path, default=None,
                   help="pipeline config folder (default: quickstart; with --fast: tiny)")
    p.add_argument("--kills", type=int, default=None, help="SIGKILLs (default 20; with --fast 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    p.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (the runs and each attempt's log)")
    p.add_argument("--attempt-timeout", type=float, default=3600.0, help="seconds one attempt may run")
    p.add_argument("--reuse-reference", action="store_true",
                   help="keep OUT/reference from an earlier run of the same config and overrides (its timing is "
                        "in OUT/reference.json) instead of running it again")
    a = p.parse_args(argv)
    config = a.config or CONFIGS / ("tiny" if a.fast else "quickstart")
    n_kills = a.kills if a.kills is not None else (4 if a.fast else 20)
    work = a.out or Path(tempfile.mkdtemp(prefix="aurl-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    ref, soak, logs = work / "reference", work / "soak", work / "logs"
    for d in (soak,) if a.reuse_reference else (ref, soak):
        shutil.rmtree(d, ignore_errors=True)
    logs.mkdir(exist_ok=True)
    overrides = ["logging.log_every_steps=1", *a.overrides]

    def command(out: Path) -> list[str]:
        return [sys.executable, "-m", "aurl.train", "--config", str(config), "--output-dir", str(out), *overrides]

    print(f"config {config.relative_to(REPO) if config.is_relative_to(REPO) else config}, overrides "
          f"{' '.join(overrides)}, {n_kills} kills, seed {a.seed}, torch threads {torch.get_num_threads()}")
    try:
        stage_seconds, ref_records = reference_run(command(ref), ref, work, logs, a.attempt_timeout,
                                                   a.reuse_reference, [str(config), *overrides])
        ref_losses = loss_records(ref_records)

        plan = plan_kills(n_kills, stage_seconds, random.Random(a.seed))
        t0 = time.monotonic()
        attempts = soak_run(command(soak), soak, logs, plan, a.attempt_timeout)
        return report(attempts, ref, soak, ref_losses, n_kills, time.monotonic() - t0)
    finally:
        if a.out is None and not a.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"runs and logs kept in {work}")


def reference_run(cmd: list[str], ref: Path, work: Path, logs: Path, timeout_s: float, reuse: bool,
                  what: list[str]) -> tuple[dict[int, float], list[dict]]:
    """The uninterrupted run: (seconds per stage, its metrics records). Reused from work/reference.json and
    work/reference when asked and recorded with the same config and overrides."""
    timing = work / "reference.json"
    if reuse:
        saved = json.loads(timing.read_text()) if timing.exists() else {}
        if saved.get("what") != what:
            raise SystemExit(f"soak: --reuse-reference: {timing} records {saved.get('what')}, not {what}")
        records = [json.loads(x) for x in (ref / "logs" / "metrics.jsonl").read_text().splitlines() if x.strip()]
        seconds = {int(k): v for k, v in saved["stage_seconds"].items()}
        print(f"reference: reused ({saved['seconds']:.0f} s when it ran); stages "
              f"{', '.join(f'{s}: {v:.0f} s' for s, v in seconds.items())}; "
              f"{sum(1 for x in records if x['split'] == 'train')} train steps")
        return seconds, records
    r = run_attempt(cmd, ref, logs / "reference.log", None, timeout_s)
    if r.rc != 0:
        print((logs / "reference.log").read_text()[-3000:])
        raise SystemExit(f"soak: the reference run failed (exit {r.rc})")
    bounds = [r.stage_seen.get(s, 0.0) for s in STAGES] + [r.seconds]
    seconds = {s: max(0.5, (r.stage_done.get(s) or bounds[i + 1]) - bounds[i]) for i, s in enumerate(STAGES)}
    timing.write_text(json.dumps({"what": what, "seconds": r.seconds, "stage_seconds": seconds}))
    print(f"reference: {r.seconds:.0f} s; stages {', '.join(f'{s}: {v:.0f} s' for s, v in seconds.items())}; "
          f"{sum(1 for x in r.new_records if x['split'] == 'train')} train steps")
    return seconds, r.new_records


def soak_run(cmd: list[str], soak: Path, logs: Path, plan: list[Kill], timeout_s: float) -> list[Attempt]:
    """One attempt per planned kill, each started with the same command, then one that runs to the end."""
    attempts: list[Attempt] = []
    for i in range(len(plan) + 1):
        kill = plan[i] if i < len(plan) else None
        at = run_attempt(cmd, soak, logs / f"attempt_{i:02d}.log", kill, timeout_s)
        attempts.append(at)
        how = (f"killed ({kill.kind}, stage {kill.stage}, delay {kill.delay_s:.3f} s) in {at.landed}"
               f"{' during a save' if at.in_save else ''}") if at.fired else f"exit {at.rc}"
        print(f"attempt {i:2d}: {at.seconds:6.1f} s, {sum(1 for x in at.new_records if x['split'] == 'train'):4d} "
              f"train steps, {how}")
        if at.fired is None:  # the run ended by itself: done, whether or not the plan is spent
            if at.rc != 0:
                print(at.log.read_text()[-3000:])
                raise SystemExit(f"soak: attempt {i} failed (exit {at.rc})")
            break
    return attempts


def report(attempts, ref: Path, soak: Path, ref_losses: dict, n_kills: int, seconds: float) -> int:
    kills = [at for at in attempts if at.fired]
    resumes = sum(1 for at in attempts[1:] if RESUMED.search(at.log.read_text()))
    replayed = replayed_steps(attempts)
    by_kind = {k: sum(1 for at in kills if at.fired.kind == k) for k in ("time", "save", "between")}
    landed = {s: sum(1 for at in kills if at.landed == f"stage {s}") for s in STAGES}
    after = sum(1 for at in kills if at.landed.startswith("after"))
    soak_records = [r for at in attempts for r in at.new_records]
    loss_equal = sum(1 for r in soak_records if ref_losses.get((r["stage"], r["step"], r["split"])) == r["loss"])
    equal, compared, other_best, lines = compare_models(ref, soak)
    ok = (len(kills) >= n_kills and equal == compared > 0 and other_best == 0
          and loss_equal == len(soak_records) > 0)
    print(f"kills: {len(kills)} of {n_kills} planned ({by_kind['time']} at a random moment, {by_kind['save']} at a "
          f"save, {by_kind['between']} after a stage; landed while training stage 1/2/3: "
          f"{'/'.join(str(landed[s]) for s in STAGES)}, between stages: {after}; {sum(at.in_save for at in kills)} "
          f"with a staging dir present, i.e. during a save)")
    print(f"resumes: {resumes} of {len(attempts) - 1} restarts resumed from a committed checkpoint; "
          f"soak wall time {seconds:.0f} s over {len(attempts)} attempts")
    print(f"steps replayed: {sum(replayed.values())} (stage 1/2/3: {'/'.join(str(replayed[s]) for s in STAGES)}); "
          f"train steps run: soak {sum(1 for r in soak_records if r['split'] == 'train')}, reference "
          f"{sum(1 for k in ref_losses if k[2] == 'train')}")
    print(f"loss records equal to the reference's: {loss_equal}/{len(soak_records)} (replays included)")
    print(f"tensors equal: {equal}/{compared} over {len(MODEL_FILES)} model files")
    for line in lines:
        print(line)
    print("result: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
