"""What the tests that start the real trainer share: where things are, reading a run folder, killing a run.

Imported by name (tests/ is on sys.path under pytest's default import mode), like midi_factory.
"""

from __future__ import annotations

import json
import os
import re
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
    """(stage, step, split) -> loss; a step replayed after a resume keeps its later record. Blind to a restart
    from scratch: a kill-and-resume test compares every record with `assert_replays_reference` instead."""
    recs = {}
    for line in (out / "logs" / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        recs[(r["stage"], r["step"], r["split"])] = r["loss"]
    return recs


# ------------------------------------------------------------------------------------------------------------
# exact resume: every record of every run, every tensor of every saved model
# ------------------------------------------------------------------------------------------------------------
WALL_CLOCK = ("tokens_per_s", "step_s")  # timings: they differ between any two runs, resumed or not


def records(out: Path) -> list[dict]:
    """Every record of logs/metrics.jsonl in order (a replayed step appears once per run that logged it),
    without the wall-clock figures."""
    path = out / "logs" / "metrics.jsonl"
    if not path.exists():
        return []
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK}
            for line in path.read_text().splitlines()]


def key(r: dict) -> tuple:
    return r["stage"], r["step"], r["split"]


RESUMED = re.compile(r"\[stage (\d+)\] resuming from (\S+) \(epoch (\d+), batch (\d+), step (\d+)\)")


def resumed_from(log: str, cursor: bool = False) -> tuple | None:
    """(stage, step) of the run's "resuming from" line, (stage, step, epoch, batch) with `cursor`; None for a
    run that started its stage afresh."""
    found = RESUMED.findall(log)
    assert len(found) <= 1, found  # a run resumes at most its first stage; later ones start fresh
    if not found:
        return None
    stage, _, epoch, batch, step = found[0]
    return (int(stage), int(step), int(epoch), int(batch)) if cursor else (int(stage), int(step))


def last_committed(out: Path, stage: int) -> int | None:
    """The newest committed checkpoint's step on disk (what a rerun must resume from), None if none."""
    from aurl.train import checkpoint as ckpt

    found = ckpt.committed(out / "checkpoints" / f"stage{stage}")
    return ckpt.read_meta(found[-1])["step"] if found else None


def assert_replays_reference(reference: list[dict], runs: list[list[dict]], resumes: list[tuple | None],
                             close=None) -> int:
    """The records of a killed-and-resumed run, one list per process run (`runs`), against an uninterrupted
    reference: each run's records are one contiguous slice of the reference's, record for record (every
    loss, replays included); the first run starts at the reference's start; a run that resumed stage s
    from step k (`resumes[i]`, from its log) starts right after the reference's records of step k (so the
    steps after k are executed exactly once more, and not from 0), one that resumed nothing starts where
    its predecessor stopped (a fresh stage) or at 0; the last run ends where the reference ends.
    close(a, b): the comparison of float values (default: equality, bit for bit). Returns how many records
    were compared (more than the reference's when steps were replayed)."""
    assert reference and len(runs) == len(resumes) and resumes[0] is None
    close = close or (lambda a, b: a == b)
    keys = [key(r) for r in reference]
    assert len(set(keys)) == len(keys), "the reference itself has replayed records"
    start, compared, prev_end = 0, 0, 0
    for i, (recs, resumed) in enumerate(zip(runs, resumes, strict=True)):
        if resumed is not None:
            stage, k = resumed
            start = next(j for j, kk in enumerate(keys) if kk[0] > stage or (kk[0] == stage and kk[1] > k))
            assert start <= prev_end, f"run {i} resumed at step {k} of stage {stage}, after records never logged"
        elif i > 0:  # no resume line: the previous run died before the stage's first commit, or between stages
            stage = keys[min(prev_end, len(keys) - 1)][0]
            start = next(j for j, kk in enumerate(keys) if kk[0] == stage)
        want = reference[start:start + len(recs)]
        assert [key(r) for r in recs] == [key(r) for r in want], (
            f"run {i}: logged {[key(r) for r in recs][:8]}..., expected the reference from record {start}: "
            f"{[key(r) for r in want][:8]}...")
        for got, ref in zip(recs, want, strict=True):
            assert got.keys() == ref.keys(), (key(got), got.keys() ^ ref.keys())
            for name in ref:
                same = close(got[name], ref[name]) if isinstance(ref[name], float) else got[name] == ref[name]
                assert same, (i, key(got), name, got[name], ref[name])
            compared += 1
        prev_end = start + len(recs)
    assert prev_end == len(keys), f"the last run ended at record {prev_end} of {len(keys)}"
    return compared


def model_tensors(path: Path) -> dict:
    """The weights of a model file (best.pt, best_model.pt: under "model_state") or of a committed
    checkpoint dir (Accelerate's model.safetensors / pytorch_model.bin files)."""
    import torch

    path = Path(path)
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)["model_state"]
    from safetensors.torch import load_file

    tensors = {}
    for f in sorted(path.glob("model*.safetensors")):
        tensors.update({f"{f.name}:{k}": v for k, v in load_file(f).items()})
    for f in sorted(path.glob("pytorch_model*.bin")):
        tensors.update({f"{f.name}:{k}": v for k, v in torch.load(f, map_location="cpu", weights_only=True).items()})
    return tensors


def assert_same_tensors(a: Path, b: Path, atol: float = 0.0, expected: int | None = None) -> int:
    """Every tensor of two saved models equal (atol 0: bit for bit); returns how many were compared, which
    must be > 0 and, given `expected`, that many (the model's own state_dict size)."""
    import torch

    ta, tb = model_tensors(a), model_tensors(b)
    assert ta.keys() == tb.keys(), ta.keys() ^ tb.keys()
    assert len(ta) > 0, f"no tensors in {a}"
    if expected is not None:
        assert len(ta) == expected, (a, len(ta), expected)
    for k in ta:
        assert ta[k].shape == tb[k].shape and ta[k].dtype == tb[k].dtype, k
        if atol == 0:
            assert torch.equal(ta[k], tb[k]), (a, k, float((ta[k].float() - tb[k].float()).abs().max()))
        else:
            assert torch.allclose(ta[k], tb[k], rtol=0, atol=atol), (a, k, float((ta[k] - tb[k]).abs().max()))
    return len(ta)


def model_size(path: Path) -> int:
    """How many tensors the model a model file describes has (its state_dict, built from the file's config)."""
    from aurl.model import MusicTransformerVAEGAN
    from aurl.model.checkpoint import load_model_state

    _, cfg, _ = load_model_state(path)
    return len(MusicTransformerVAEGAN(cfg).state_dict())


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


class KilledRuns:
    """The same command run again and again on one output dir, each run killed at a chosen moment (or run to
    the end); keeps what the checks need: each run's own records and its "resuming from" (stage, step)."""

    def __init__(self, out: Path, cmd: list[str], env: dict):
        self.out, self.cmd, self.env = out, cmd, env
        self.segments: list[list[dict]] = []
        self.resumes: list[tuple | None] = []
        self.cursors: list[tuple | None] = []  # (epoch, batch) each run resumed at
        self.expected: list[tuple | None] = [None]  # what each run must resume from: the newest commit on disk
        self.offset = len(records(out))  # records of earlier stages already there (a copied run folder)

    def ended(self, log: str) -> None:
        """Record a run that has ended: its records (the lines it appended) and what it resumed from."""
        before = self.offset + sum(len(seg) for seg in self.segments)
        self.segments.append(records(self.out)[before:])
        self.resumes.append(resumed_from(log))
        found = resumed_from(log, cursor=True)
        self.cursors.append(found[2:] if found else None)

    def fault(self, phase: str, stage: int, step: int) -> None:
        """Rank 0 SIGKILLs itself at `phase` of the commit of `step` (checkpoint.py's test-only fault point)."""
        from aurl.train.checkpoint import KILL_AT_ENV

        r = subprocess.run(self.cmd, cwd=REPO, env={**self.env, KILL_AT_ENV: f"{phase}:{stage}:{step}"},
                           capture_output=True, text=True, timeout=400)
        assert r.returncode != 0, f"{phase}:{stage}:{step} was never reached\n{r.stderr[-2000:]}"
        self.ended(r.stdout + r.stderr)
        self.expect(stage)

    def kill9(self, pred, stage: int) -> None:
        """SIGKILL the run and everything it started, from outside, once pred() holds."""
        log = self.out.parent / f"run{len(self.segments)}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(self.cmd, cwd=REPO, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            hit = wait_for(pred, proc, timeout=300)
            tree = kill9_tree(proc.pid)
            proc.wait()
        end = time.time() + 20
        while time.time() < end and any(alive(p) for p in tree):  # nothing of the killed run may go on
            time.sleep(0.05)
        assert not any(alive(p) for p in tree), [p for p in tree if alive(p)]
        assert hit, f"the run ended before the moment to kill it:\n{log.read_text()[-2000:]}"
        self.ended(log.read_text())
        self.expect(stage)

    def finish(self) -> str:
        r = subprocess.run(self.cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=400)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        self.ended(r.stdout + r.stderr)
        return r.stdout + r.stderr

    def expect(self, stage: int) -> None:
        k = last_committed(self.out, stage)
        self.expected.append((stage, k) if k is not None else None)

    def check_resumes(self) -> None:
        """Each rerun resumed from the newest committed checkpoint present when its predecessor died."""
        assert self.resumes == self.expected, (self.resumes, self.expected)
