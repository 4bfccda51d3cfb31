"""Elastic resume: a stage committed on N processes resumes on M (any M >= 1, either way, across nodes).

What is kept, and how:
- The global batch G = micro-batch x accumulation x processes, fixed when the stage first starts. On M
  processes the accumulation is re-derived, G / (data.batch_size x M); when data.batch_size does not divide
  G / M, the largest micro-batch below it that does is taken (never a larger one: it could not fit) and the
  split is logged. Only when M does not divide G is there no exact split: the resume is refused, naming the
  process counts that work.
- The global sample order: EpochBatchSampler cuts the epoch's permutation into consecutive chunks of one
  micro-batch and deals them round-robin, so the data cursor is a global sample index (meta.json "sample")
  and every sample of the epoch is drawn exactly once across the change. With the micro-batch unchanged, a
  step draws the very same micro-batches on M processes as on N, so the step's gradient (the mean over its
  micro-batches) differs only by the order of float sums.
- Weights and optimizer state. DDP: Accelerate's checkpoint holds them whole (rank 0 writes them), so they
  load at any M. DeepSpeed ZeRO-2/3 shards the optimizer state per rank: the checkpoint is converted with
  DeepSpeed's own ds_to_universal (per-parameter fp32 weights and Adam moments) into a hidden folder next to
  it, loaded with DeepSpeed's load_universal, and the folder is removed once every rank has loaded it
  (the conversion's time and size are printed). Each rank's RNG state is restored where that rank existed
  before; a new rank keeps its seeded state (the test configs train with dropout off for exact comparison).
- The record: every change of world size is appended to the stage's "world_size_changes" in the state file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from aurl.console import UserError, print0

UNIVERSAL_PREFIX = ".universal-"  # next to the checkpoint it was converted from; removed after the load


@dataclass(frozen=True)
class Layout:
    """How this launch splits the stage's global batch."""

    world_size: int
    micro_batch: int
    grad_accum: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.micro_batch * self.grad_accum

    def record(self) -> dict:
        return asdict(self) | {"global_batch": self.global_batch}


def recorded_global_batch(entry: dict) -> int | None:
    """The global batch a stage's state entry was trained with (None for an entry without the layout)."""
    if "global_batch" in entry:
        return int(entry["global_batch"])
    if all(k in entry for k in ("world_size", "micro_batch", "grad_accum")):
        return int(entry["world_size"]) * int(entry["micro_batch"]) * int(entry["grad_accum"])
    return None


def workable_worlds(global_batch: int) -> list[int]:
    return [m for m in range(1, global_batch + 1) if global_batch % m == 0]


def split_refusal(global_batch: int, world: int, recorded_world: int, stage: int) -> str | None:
    """None when `world` processes can share the global batch exactly, else the refusal naming what works."""
    if global_batch % world == 0:
        return None
    ok = ", ".join(map(str, workable_worlds(global_batch)))
    return (f"stage {stage}'s global batch is {global_batch} samples (recorded on {recorded_world} processes): "
            f"{world} processes cannot share it exactly. Relaunch with --num_processes (or SLURM nodes x GPUs) "
            f"in {{{ok}}}, or start the stage over with --clear")


def layout_for(micro_batch: int, grad_accum: int, world: int, entry: dict | None, resuming: bool) -> Layout:
    """This launch's split: the config's (data.batch_size, optim.grad_accum) for a fresh stage; for a resume,
    the recorded global batch split over `world` processes (the caller refused a world with no exact split)."""
    g = recorded_global_batch(entry) if resuming and entry else None
    if g is None or (g == micro_batch * grad_accum * world):
        return Layout(world, micro_batch, grad_accum)
    assert g % world == 0, (g, world)
    per_rank = g // world
    micro = max(m for m in range(1, min(micro_batch, per_rank) + 1) if per_rank % m == 0)
    return Layout(world, micro, per_rank // micro)


def describe(layout: Layout, meta: dict, stage: int, config_micro: int) -> str:
    """The log line of a change of world size (meta: the checkpoint's meta.json)."""
    note = "" if layout.micro_batch == config_micro else (
        f" (data.batch_size {config_micro} does not divide {layout.global_batch // layout.world_size} samples per "
        f"process: the nearest exact split below it)")
    return (f"[stage {stage}] elastic resume: {meta.get('world_size')} -> {layout.world_size} processes, global "
            f"batch {layout.global_batch} kept as micro-batch {layout.micro_batch} x grad_accum "
            f"{layout.grad_accum} x {layout.world_size} processes{note}")


def start_batch(meta: dict, layout: Layout) -> int:
    """The resumed launch's per-rank batch cursor from the checkpoint's global sample cursor."""
    if "sample" not in meta:  # written before the cursor was global: only its own layout can read it
        if meta.get("world_size") != layout.world_size:
            raise UserError(f"this checkpoint (written on {meta.get('world_size')} processes) predates elastic "
                            f"resume: relaunch with --num_processes {meta.get('world_size')}")
        return int(meta["batch"])
    per_batch = layout.micro_batch * layout.world_size
    assert meta["sample"] % per_batch == 0, (meta["sample"], layout)
    return int(meta["sample"]) // per_batch


def world_size_changes(entry: dict | None, meta: dict, layout: Layout, checkpoint: Path) -> list[dict]:
    """The stage's record of world-size changes, with this resume's appended when it changes the world."""
    changes = list((entry or {}).get("world_size_changes") or [])
    if meta.get("world_size") not in (None, layout.world_size):
        from aurl.train.state import now

        changes.append({"step": meta["step"], "epoch": meta["epoch"], "sample": meta.get("sample"),
                        "from_world_size": meta["world_size"], "to_world_size": layout.world_size,
                        "micro_batch": layout.micro_batch, "grad_accum": layout.grad_accum,
                        "checkpoint": checkpoint.name, "at": now()})
    return changes


def needs_universal(is_deepspeed: bool, meta_world: int | None, world: int) -> bool:
    return is_deepspeed and meta_world is not None and meta_world != world


def load(accelerator, path: Path, universal: bool) -> None:
    """Every rank: the checkpoint's weights, optimizer state and RNG states into the prepared objects.
    universal: a DeepSpeed checkpoint written on another number of processes (see the module docstring)."""
    if not universal:
        accelerator.load_state(str(path))
        return
    path = Path(path)
    uni = path.parent / (UNIVERSAL_PREFIX + path.name)
    if accelerator.is_main_process:
        convert_to_universal(path, uni)
    accelerator.wait_for_everyone()
    accelerator.load_state(str(uni))  # the engine was built with load_universal (configure_deepspeed)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        shutil.rmtree(uni, ignore_errors=True)


def convert_to_universal(path: Path, uni: Path) -> None:
    """Rank 0: DeepSpeed's ds_to_universal on the engine's folder of a committed checkpoint, into `uni`, with
    the per-rank RNG files beside it (what accelerator.load_state reads)."""
    if uni.exists():
        shutil.rmtree(uni)  # left by a resume that was killed mid-conversion
    uni.mkdir(parents=True)
    t0 = time.perf_counter()
    # --inject_missing_state: a plain torch module carries no universal-checkpoint info (Megatron's do)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
           str(path / "pytorch_model"), "--output_folder", str(uni / "pytorch_model"), "--inject_missing_state",
           "--num_extract_workers", "1", "--num_merge_workers", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        shutil.rmtree(uni, ignore_errors=True)
        tail = " | ".join(r.stderr.strip().splitlines()[-3:])
        raise UserError(f"DeepSpeed's ds_to_universal could not convert {path} ({tail}); relaunch on the "
                        f"process count it was written with (meta.json world_size)")
    for rng in path.glob("random_states_*.pkl"):
        shutil.copy2(rng, uni / rng.name)
    took = time.perf_counter() - t0
    size, source = _size(uni / "pytorch_model"), _size(path / "pytorch_model")
    print0(f"universal checkpoint: {path.name} converted in {took:.1f} s, {size / 2**20:.1f} MiB "
           f"(the ZeRO checkpoint: {source / 2**20:.1f} MiB), removed after the load")


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def mean_over_ranks(logs: dict[str, float], accelerator) -> dict[str, float]:
    """Every rank: the step's logged figures averaged over ranks (each rank's are the mean over its own
    micro-batches, so this is the mean over all of the step's micro-batches), so that a step logs the same
    values on any number of processes. One all-reduce of a few floats, on logged steps only."""
    if accelerator.num_processes == 1 or not logs:
        return logs
    import torch

    names = sorted(logs)  # the same order on every rank
    flat = torch.tensor([logs[k] for k in names], dtype=torch.float64, device=accelerator.device)
    flat = accelerator.reduce(flat, reduction="mean")
    return dict(zip(names, flat.tolist(), strict=True))
