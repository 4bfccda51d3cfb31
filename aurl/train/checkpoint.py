"""Committed full-state checkpoints: <output-dir>/checkpoints/stageN/step_<step, 8 digits>/.

The commit protocol (Accelerate and DeepSpeed do not give one):
  1. every rank saves into the staging dir .staging-step_<step> (accelerator.save_state is a collective;
     it writes model, optimizers and each rank's RNG states)
  2. barrier
  3. rank 0 writes meta.json (data cursor, step, best) and renames staging -> step_<step> (the commit)
  4. rank 0 points the state file at it (atomic)
  5. barrier
  6. rank 0 deletes older committed checkpoints beyond `keep` and any stale staging dir.
A directory without meta.json, or with the staging prefix, is never loaded.

Test-only fault point: AURL_TEST_KILL_AT="<phase>:<stage>:<step>" makes rank 0 SIGKILL itself (as kill -9
would) at one phase of the save of that stage's step, so that the tests can crash a run inside the commit
protocol at a chosen moment: "staging_partial" (the staging dir holds accelerator.save_state's files but not
extra_state.pt nor meta.json), "before_rename" (staging complete with meta.json, not yet renamed),
"before_state_file" (renamed, the state file not yet pointing at it). Unset (always, outside the tests) it
does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import torch

from aurl.atomic import _fsync_dir, atomic_write_json
from aurl.console import UserError
from aurl.train.elastic import UNIVERSAL_PREFIX

KILL_AT_ENV = "AURL_TEST_KILL_AT"  # test-only, see the module docstring
KILL_PHASES = ("staging_partial", "before_rename", "before_state_file")
STAGING_PREFIX = ".staging-"
META = "meta.json"
EXTRA = "extra_state.pt"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def is_committed(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and not path.name.startswith(STAGING_PREFIX) and (path / META).is_file()


def committed(stage_dir: str | Path) -> list[Path]:
    """Committed checkpoints of a stage, oldest first."""
    stage_dir = Path(stage_dir)
    if not stage_dir.is_dir():
        return []
    return sorted(p for p in stage_dir.glob("step_*") if is_committed(p))


def read_meta(path: str | Path) -> dict:
    return json.loads((Path(path) / META).read_text())


def save(accelerator, stage_dir: Path, step: int, meta: dict, on_commit=None, keep: int = 2,
         extra: dict | None = None) -> Path:
    """Run the commit protocol on every rank; returns the committed dir. on_commit(path) runs on rank 0
    after the rename and before the final barrier (the state-file update). `extra`: name -> object with
    state_dict(), identical on every rank and not prepared by Accelerate (the discriminator kept outside a
    DeepSpeed engine and its optimizer); rank 0 writes them to extra_state.pt inside the same commit."""
    stage_dir = Path(stage_dir)
    final = stage_dir / step_name(step)
    staging = stage_dir / (STAGING_PREFIX + final.name)
    if accelerator.is_main_process:
        stage_dir.mkdir(parents=True, exist_ok=True)
        if staging.exists():
            shutil.rmtree(staging)  # left by a save that was killed
        staging.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    stage = meta.get("stage")
    if accelerator.is_main_process:
        _fault_point("staging_partial", stage, step)
    if extra and accelerator.is_main_process:
        torch.save({name: obj.state_dict() for name, obj in extra.items()}, staging / EXTRA)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(staging / META, {**meta, "step": step, "world_size": accelerator.num_processes})
        _fault_point("before_rename", stage, step)
        if final.exists():  # the same step committed before a crash: replace it
            shutil.rmtree(final)
        os.replace(staging, final)
        _fsync_dir(stage_dir)
        _fault_point("before_state_file", stage, step)
        if on_commit is not None:
            on_commit(final)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        purge(stage_dir, keep)
    return final


def _fault_point(phase: str, stage, step: int) -> None:
    """The test-only crash of the module docstring: SIGKILL to this process at the requested phase."""
    wanted = os.environ.get(KILL_AT_ENV)
    if not wanted:
        return
    want_phase, want_stage, want_step = wanted.split(":")
    assert want_phase in KILL_PHASES, f"{KILL_AT_ENV}={wanted}: phase not in {KILL_PHASES}"
    if (want_phase, want_stage, want_step) == (phase, str(stage), str(step)):
        os.kill(os.getpid(), signal.SIGKILL)


def load_extra(path: Path, extra: dict | None) -> None:
    """Every rank: restore the objects save() wrote as `extra` (a checkpoint without them is an error)."""
    if not extra:
        return
    file = Path(path) / EXTRA
    if not file.is_file():
        raise UserError(f"{path} has no {EXTRA} (the discriminator's state): it was not written by a DeepSpeed "
                        "run of this stage; resume with the launch config that wrote it")
    states = torch.load(file, map_location="cpu", weights_only=True)
    for name, obj in extra.items():
        obj.load_state_dict(states[name])


def purge(stage_dir: Path, keep: int) -> None:
    assert keep >= 2
    for old in committed(stage_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for stale in [*stage_dir.glob(STAGING_PREFIX + "*"), *stage_dir.glob(UNIVERSAL_PREFIX + "*")]:
        shutil.rmtree(stale, ignore_errors=True)  # left by a save or an elastic resume that was killed


def latest(stage_dir: str | Path, recorded: str | None = None) -> Path | None:
    """The checkpoint to resume from: the one the state file records if it is committed, else the newest
    committed one (a crash between the rename and the state-file write)."""
    if recorded and is_committed(recorded):
        newest = committed(stage_dir)
        if newest and newest[-1] != Path(recorded) and newest[-1].name > Path(recorded).name:
            return newest[-1]
        return Path(recorded)
    found = committed(stage_dir)
    return found[-1] if found else None
