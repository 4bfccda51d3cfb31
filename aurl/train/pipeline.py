"""The three-stage pipeline: stage 1 (transformer, clean data) -> stage 2 (augmented, larger) -> stage 3
(VAE-GAN, wider augmentation), each started from the previous stage's best weights (aurl.model.transfer).

A pipeline config is a folder holding one YAML per stage whose file name contains the stage number
(configs/training_configs/quickstart/stage1.yaml ..., or stage1_base.yaml ...), or a path pattern with
"{stage}". Overrides: `section.key=value` applies to every stage, `stageN.section.key=value` to stage N only.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import aurl
from aurl.atomic import atomic_write_json
from aurl.config import StageConfig, load_config, parse_overrides, stage_config_path
from aurl.console import UserError, print0, warn
from aurl.rundir import RunDir
from aurl.train import resume
from aurl.train import state as st
from aurl.train.preemption import STOPPED_EXIT

STAGES = (1, 2, 3)
DEFAULT_CONFIG = Path(aurl.__file__).resolve().parent.parent / "configs" / "training_configs" / "quickstart"


def stage_overrides(items: list[str], stage: int) -> dict:
    common, own = [], []
    for item in items:
        head, _, rest = item.partition(".")
        if head.startswith("stage") and head[5:].isdigit():
            if int(head[5:]) not in STAGES:
                raise UserError(f"override {item!r}: no stage {head[5:]} (stages are 1, 2, 3)")
            if int(head[5:]) == stage:
                own.append(rest)
        else:
            common.append(item)
    merged = parse_overrides(common)
    for section, values in parse_overrides(own).items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_pipeline(config: str | Path | None, overrides: list[str], data: str | None = None,
                  tracker: str | None = None) -> dict[int, StageConfig]:
    """Every stage's config, all checked before any work starts. `data` and `tracker` (--data, --tracker) are
    the overrides data.data_dir= and logging.tracker= for every stage, winning over the others."""
    config = DEFAULT_CONFIG if config is None else config
    sugar = {"data": {"data_dir": data}} if data is not None else {}
    if tracker is not None:
        sugar["logging"] = {"tracker": tracker}
    cfgs = {}
    for s in STAGES:
        merged = stage_overrides(overrides, s)
        for section, values in sugar.items():
            merged.setdefault(section, {}).update(values)
        cfgs[s] = load_config(stage_config_path(config, s), merged)
    return cfgs


def run_precision(cfgs: dict[int, StageConfig], stages: tuple[int, ...]) -> str:
    """The one mixed precision of this process: every stage it trains must ask for the same
    train.mixed_precision (one process has one Accelerator, and an Accelerator one precision)."""
    values = {s: cfgs[s].train.mixed_precision for s in stages}
    if len(set(values.values())) > 1:
        listed = ", ".join(f"stage {s}: {v}" for s, v in values.items())
        raise UserError(f"train.mixed_precision differs between the stages of this run ({listed}); one process "
                        "trains in one precision: give the stages the same value, or run each stage as its own "
                        "launch (--stage N)")
    return next(iter(values.values()))


def make_accelerator(mixed_precision: str = "no"):
    """The run's one Accelerator, in the stages' train.mixed_precision. That key wins over the launcher's
    (`accelerate launch --mixed_precision`, the accelerate config's mixed_precision: both reach us as
    ACCELERATE_MIXED_PRECISION), and a launcher that asked for another one is told so in one line.
    Under DeepSpeed (an accelerate_configs/deepspeed_*.yaml launch sets ACCELERATE_USE_DEEPSPEED) there are
    no DDP kwargs and no cpu=True (that would drop DeepSpeed), and the precision goes into the DeepSpeed
    config (bf16.enabled); without CUDA every multi-process run uses gloo (DeepSpeed included)."""
    import torch
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, InitProcessGroupKwargs, parse_flag_from_env

    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher is not None and launcher.lower() != mixed_precision:
        warn(f"train.mixed_precision = {mixed_precision} (the stage config) is used; the launcher's mixed "
             f"precision {launcher} (--mixed_precision or the accelerate config) is not")
    deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED")
    # find_unused_parameters is set per stage (aurl.train.distributed.set_find_unused_parameters)
    handlers = [] if deepspeed else [DistributedDataParallelKwargs()]
    cuda = torch.cuda.is_available()
    if not cuda and int(os.environ.get("WORLD_SIZE", "1")) > 1:  # a launcher started several CPU processes
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    state = AcceleratorState._shared_state
    if state.get("_mixed_precision") not in (None, mixed_precision):
        # a second pipeline in the same process (tests, a notebook) in another precision: accelerate keeps its
        # state per process and would refuse the change
        AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=not cuda and not deepspeed, mixed_precision=mixed_precision,
                              kwargs_handlers=handlers)
    if accelerator.mixed_precision != mixed_precision:  # a DeepSpeed config file that sets bf16/fp16 itself
        raise UserError(f"train.mixed_precision = {mixed_precision}, but the DeepSpeed config file sets "
                        f"{accelerator.mixed_precision}: make them agree (or leave its fp16/bf16 blocks out)")
    return accelerator


def run_pipeline(cfgs: dict[int, StageConfig], out_dir: Path, stages: tuple[int, ...],
                 from_scratch: bool = False) -> int:
    """Run `stages` in order; exit code 0 (done) or STOPPED_EXIT (preempted with a committed checkpoint)."""
    run = RunDir(out_dir)
    state = st.read_state(run.root)  # every rank: a corrupt state file stops all of them here, with the .bak offered
    done = {s for s, e in ((state or {}).get("stages") or {}).items() if e["status"] == "completed"}
    accelerator = make_accelerator(run_precision(cfgs, tuple(s for s in stages if str(s) not in done) or stages))
    lock = None
    try:
        refuse_changed_resumes(cfgs, stages, state, run, accelerator)  # before anything is written
        if accelerator.is_main_process:
            run.root.mkdir(parents=True, exist_ok=True)
            lock = st.RunLock(run.root).acquire()
        accelerator.wait_for_everyone()
        for stage in stages:
            entry = ((st.read_state(run.root) or {}).get("stages", {}) or {}).get(str(stage))
            if entry and entry["status"] == "completed":
                print0(f"[stage {stage}] already completed (best val {entry.get('best_val_loss')}); skipping")
                continue
            if train_stage(cfgs[stage], stage, run, accelerator, from_scratch) == "stopped":
                return STOPPED_EXIT
            accelerator.wait_for_everyone()
        print0(f"done: best model in {run.best_model}")
        return 0
    finally:
        if lock is not None:
            lock.release()
        accelerator.end_training()  # trackers closed and the process group torn down before exit


def train_stage(cfg: StageConfig, stage: int, run: RunDir, accelerator, from_scratch: bool) -> str:
    """One stage, started from the previous stage's best weights; "completed" or "stopped"."""
    from aurl.train.trainer import StageTrainer

    init_from = run.best(stage - 1) if stage > 1 else None
    if init_from is not None and not init_from.exists():
        if not from_scratch:
            raise UserError(f"stage {stage} starts from stage {stage - 1}'s best weights, but {init_from} does "
                            f"not exist: run stage {stage - 1} first, or pass --from-scratch")
        init_from = None

    def stage_end(stage_tracker, step):
        if cfg.eval.enabled:  # the other ranks wait in StageTrainer.finish for rank 0's evaluation
            evaluate_stage(cfg, stage, run, stage_tracker, step)

    return StageTrainer(cfg, stage, run, accelerator, init_from, on_complete=stage_end).train()


def refuse_changed_resumes(cfgs: dict[int, StageConfig], stages: tuple[int, ...], state: dict | None,
                           run: RunDir, accelerator) -> None:
    """A stage that would resume from a committed checkpoint under changed settings (state.check_resumable)
    stops the run before it writes anything; rank 0 decides for all. The data fingerprint is compared later,
    in the stage, once the data is open."""
    refusal = None
    if accelerator.is_main_process:
        for stage in stages:
            entry = ((state or {}).get("stages") or {}).get(str(stage))
            if entry and entry["status"] != "completed":
                _, refusal = resume.resume_point(run, stage, entry, resume.run_record(cfgs[stage], accelerator))
                if refusal:
                    break
    _, refusal = resume.broadcast_from_main(accelerator, None, refusal)
    if refusal:
        raise UserError(refusal)


def evaluate_stage(cfg: StageConfig, stage: int, run: RunDir, tracker=None, step: int = 0) -> None:
    """Rank 0, after a completed stage: aurl.evaluate on the stage's best model, into RUN/eval/stageN;
    its sounds, pictures and sample table to the stage's trackers at `step`; RUN/report.html rewritten.
    A failure here is reported and training goes on: the stage's weights are already committed."""
    from aurl.evaluate.core import evaluate_checkpoint
    from aurl.evaluate.text import format_report

    best = run.best(stage)
    if not best.exists():
        return
    eval_cfg = dataclasses.replace(cfg.eval, seed=cfg.train.seed)  # the eval section is an EvalConfig
    try:
        result = evaluate_checkpoint(best, run.cache(cfg.data.cache_dir), eval_cfg, out_dir=run.eval(stage),
                                     device="auto")
    except Exception as e:  # noqa: BLE001 -- an evaluation bug must not cost the trained stage
        warn(f"[stage {stage}] evaluation failed ({type(e).__name__}: {e}); run python -m aurl.evaluate "
             f"--checkpoint {best} to retry")
        return
    for line in format_report(result).splitlines():
        print0(f"[stage {stage}] {line}")
    try:
        from aurl.evaluate.report import tracker_media, write_report

        atomic_write_json(run.eval(stage) / "stage_config.json", cfg.to_dict())
        if tracker is not None:
            tracker.log_media(tracker_media(result), step)
        print0(f"[stage {stage}] report: {write_report(run.root)}")
    except Exception as e:  # noqa: BLE001 -- as above: the report is a view, never a reason to stop
        warn(f"[stage {stage}] report not written ({type(e).__name__}: {e}); run python -m aurl.evaluate --report "
             f"--run-dir {run.root} to retry")
