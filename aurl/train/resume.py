"""Whether and from where a stage resumes: rank 0 decides, every rank follows.

A stage resumes from its last committed checkpoint (aurl.train.checkpoint.latest) only when its state entry
was recorded under the same data and settings (aurl.train.state.check_resumable); on another number of
processes it resumes elastically (aurl.train.elastic), so the decision also fixes this launch's split of the
global batch, and is taken before the sampler and the Engine are built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from aurl.config import StageConfig
from aurl.console import UserError
from aurl.rundir import RunDir
from aurl.train import checkpoint as ckpt
from aurl.train import elastic
from aurl.train import state as st
from aurl.train.distributed import is_deepspeed


def run_record(cfg: StageConfig, accelerator, data_fingerprint: str | None = None) -> dict:
    """What a stage records in its state entry and a resume must find unchanged (state.check_resumable):
    the launch's layout, the data and the stage's settings. Without data_fingerprint (the data not opened
    yet) that key is left out, and so not compared."""
    ds = is_deepspeed(accelerator)
    d, o, t = cfg.data, cfg.optim, cfg.train
    run = {"world_size": accelerator.num_processes, "micro_batch": d.batch_size, "grad_accum": o.grad_accum,
           "seed": t.seed, "config_hash": cfg.hash(),
           "zero_stage": accelerator.state.deepspeed_plugin.zero_stage if ds else None,
           "mixed_precision": accelerator.mixed_precision, "settings": st.resume_settings(cfg)}
    if data_fingerprint is not None:
        run["data_fingerprint"] = data_fingerprint
    return run


def resume_point(run_dir: RunDir, stage: int, entry: dict | None, run: dict) -> tuple[Path | None, str | None]:
    """Rank 0: (the committed checkpoint the stage resumes from, or None; the refusal, or None)."""
    sdir = run_dir.stage_checkpoints(stage)
    # by name inside this output dir: a run folder that was moved or copied still resumes from its own files
    recorded = str(sdir / Path(entry["last_checkpoint"]).name) if entry and entry.get("last_checkpoint") else None
    resume_from = ckpt.latest(sdir, recorded)
    if entry and resume_from is not None:
        try:
            st.check_resumable(entry, run, stage, resume_from)
        except UserError as e:
            return resume_from, str(e)
    return resume_from, None


def broadcast_from_main(accelerator, path: Path | None, refusal: str | None, *more) -> tuple:
    """Rank 0's choice of checkpoint (and its refusal, if any, and any more picklable values), sent to all
    ranks: (path, refusal, *more)."""
    if accelerator.num_processes == 1:
        return path, refusal, *more
    from accelerate.utils import broadcast_object_list

    obj = [str(path) if path is not None else None, refusal, *more]
    broadcast_object_list(obj, from_process=0)
    return (Path(obj[0]) if obj[0] else None), obj[1], *obj[2:]


@dataclass(frozen=True)
class Decision:
    """Rank 0's resume decision, the same on every rank."""

    checkpoint: Path | None
    """The committed checkpoint the stage resumes from, or None (a fresh stage)."""
    entry: dict | None
    """The stage's entry of the state file, as rank 0 read it."""
    meta: dict | None
    """The checkpoint's meta.json (its cursor, and the world size it was written on)."""
    layout: elastic.Layout
    """How this launch splits the stage's global batch (micro-batch, accumulation)."""
    universal: bool
    """A DeepSpeed checkpoint written on another number of processes: loaded as a universal checkpoint."""


def decide(accelerator, run_dir: RunDir, stage: int, run: dict) -> Decision:
    """Every rank: rank 0's decision (run: run_record's, before the layout is known). All ranks resume from
    the same dir or all refuse (UserError): rank 0 decides, since other nodes' file systems may lag."""
    entry = resume_from = refusal = meta = layout = None
    if accelerator.is_main_process:
        entry = ((st.read_state(run_dir.root) or {}).get("stages") or {}).get(str(stage))
        resume_from, refusal = resume_point(run_dir, stage, entry, run)
        meta = ckpt.read_meta(resume_from) if resume_from is not None and not refusal else None
        layout = elastic.layout_for(run["micro_batch"], run["grad_accum"], accelerator.num_processes, entry,
                                    meta is not None)
    resume_from, refusal, meta, layout, entry = broadcast_from_main(accelerator, resume_from, refusal, meta,
                                                                    layout, entry)
    if refusal:
        raise UserError(refusal)
    universal = elastic.needs_universal(is_deepspeed(accelerator), (meta or {}).get("world_size"),
                                        accelerator.num_processes)
    return Decision(resume_from, entry, meta, layout, universal)
