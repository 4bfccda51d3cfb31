"""One stage of training, top to bottom: setup -> resume -> epochs of optimizer steps -> validation ->
committed checkpoints -> best model. Every rank runs all of it; rank 0 alone writes the state file,
the best model and the logs.

Exact resume: the data order is a pure function of (seed, epoch) (EpochBatchSampler, not prepared by
Accelerate), augmentation a pure function of (seed, epoch, index), checkpoints are taken only at
optimizer-step boundaries and hold model, optimizers, every rank's RNG states (accelerator.save_state) and
the data cursor (meta.json: epoch, next batch, and the global sample index "sample" from which a launch on
another number of processes resumes: aurl.train.elastic). The learning rate is a pure function of the step.
"""

from __future__ import annotations

import math
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from aurl.config import StageConfig
from aurl.console import UserError, print0
from aurl.data.cache import ensure_cache
from aurl.data.dataset import EpochBatchSampler, WindowDataset
from aurl.model import MusicTransformerVAEGAN, elbo
from aurl.model.checkpoint import init_from_model_file, save_model_file
from aurl.train import checkpoint as ckpt
from aurl.train import elastic
from aurl.train import state as st
from aurl.train.distributed import (
    average_gradients,
    configure_deepspeed,
    detach_discriminator,
    export_weights,
    is_deepspeed,
)
from aurl.train.preemption import StopFlag
from aurl.train.schedule import lr_at, set_lr
from aurl.train.tracking import Trackers

PROGRESS_EVERY_S = 30.0  # rank 0 refreshes step, tokens/s and ETA in the state file at least this often


def stage_dir(out_dir: Path, stage: int) -> Path:
    return out_dir / "checkpoints" / f"stage{stage}"


def cache_path(cfg: StageConfig, out_dir: Path) -> Path:
    """The stage's token cache: data.cache_dir, else <output-dir>/cache."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else Path(out_dir) / "cache"


def best_path(out_dir: Path, stage: int) -> Path:
    return stage_dir(out_dir, stage) / "best.pt"


def _adamw(params, lr: float, o) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(o.beta1, o.beta2))


@torch.no_grad()
def evaluate(model, loader, accelerator, cfg: StageConfig, step: int) -> dict[str, float]:
    """Validation figures (aurl.model.elbo.figures), sums reduced across ranks. figures["loss"] selects the
    best model: the exact NLL per token (transformer) or the negative ELBO per token (vae modes), the same
    number the stage-end evaluation reports; never the reconstruction given z = mu."""
    model.eval()
    dev = accelerator.device
    sums = {k: torch.zeros(shape, dtype=torch.float64, device=dev) for k, shape in elbo.sum_shapes(cfg.model).items()}
    for i, batch in enumerate(loader):
        if cfg.train.max_val_batches and i >= cfg.train.max_val_batches:
            break
        ids, mask = batch["input_ids"].to(dev), batch["loss_mask"].to(dev)
        with _autocast(cfg, accelerator):
            out = model(ids, mask, step=step, phase="validate", seed=cfg.train.seed)
        for k, v in out.metrics.items():
            sums[k] += v.to(dev)
    keys = sorted(sums)  # one flat all-reduce, the same order on every rank
    flat = accelerator.reduce(torch.cat([sums[k].reshape(-1) for k in keys]), reduction="sum")
    sizes = [sums[k].numel() for k in keys]
    reduced = {k: v.reshape(sums[k].shape) for k, v in zip(keys, flat.split(sizes), strict=True)}
    model.train()
    return elbo.figures(reduced, cfg.model.active_unit_threshold)


def make_val_loader(val_ds: WindowDataset, cfg: StageConfig, rank: int, world: int) -> DataLoader:
    """The validation windows of this rank: over all ranks every window exactly once (the first
    max_val_batches x batch_size of them when that key is set), so the validation value does not depend on
    the number of processes; every rank runs the same number of batches (EpochBatchSampler, drop_last=False)."""
    d, t = cfg.data, cfg.train
    sampler = EpochBatchSampler(len(val_ds), d.batch_size, seed=t.seed, rank=rank, world_size=world,
                                shuffle=False, drop_last=False, limit=t.max_val_batches * d.batch_size)
    return DataLoader(val_ds, batch_sampler=sampler, num_workers=d.num_workers,
                      generator=torch.Generator().manual_seed(t.seed))


def _autocast(cfg: StageConfig, accelerator):
    if cfg.train.mixed_precision == "bf16":
        return torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16)
    return nullcontext()


def run_stage(cfg: StageConfig, stage: int, out_dir: Path, accelerator, init_from: Path | None,
              tracker_kind: str, data_dir: str | None = None, on_complete=None) -> str:
    """Train one stage; returns "completed" or "stopped" (preempted, committed). Resumes automatically.
    on_complete(tracker, step): rank 0, once the completed stage is recorded, before its trackers close."""
    # ---------------------------------------------------------------------------------------------- setup
    out_dir = Path(out_dir)
    main = accelerator.is_main_process
    d, o, t = cfg.data, cfg.optim, cfg.train
    cache_dir = cache_path(cfg, out_dir)
    with accelerator.main_process_first():  # rank 0 builds the cache, the others then open it
        cache = ensure_cache(data_dir if data_dir is not None else d.data_dir, cache_dir, val_fraction=d.val_fraction,
                             split_seed=d.split_seed, progress=False, corpus_limit=d.corpus_limit)
    train_ds = WindowDataset(cache, "train", seq_len=d.seq_len, augment=cfg.augment, seed=t.seed,
                             start_share=d.start_share)
    val_ds = WindowDataset(cache, "val", seq_len=d.seq_len, augment=None, seed=t.seed)
    rank, world = accelerator.process_index, accelerator.num_processes

    # ------------------------------------------------------------------------------------- state + resume
    # decided before the sampler and prepare: on another number of processes the global batch is split anew
    run = run_record(cfg, accelerator, cache.fingerprint)
    state = st.read_state(out_dir) if main else None
    entry = (state or {}).get("stages", {}).get(str(stage)) if main else None
    resume_from, refusal = resume_point(out_dir, stage, entry, run) if main else (None, None)
    meta = ckpt.read_meta(resume_from) if main and resume_from is not None and not refusal else None
    layout = elastic.layout_for(d.batch_size, o.grad_accum, world, entry, meta is not None) if main else None
    # all ranks resume from the same dir, or all refuse: rank 0 decides (other nodes' file systems may lag)
    resume_from, refusal, meta, layout, entry = broadcast_from_main(accelerator, resume_from, refusal, meta, layout,
                                                                    entry)
    if refusal:
        raise UserError(refusal)
    run.update(layout.record())
    sampler = EpochBatchSampler(len(train_ds), layout.micro_batch, seed=t.seed, rank=rank, world_size=world)
    # own generators: iter(DataLoader) draws a seed, and from the global RNG it would shift dropout's stream
    # after a mid-epoch resume (the resumed run starts its iterator at another point of that stream)
    train_loader = DataLoader(train_ds, batch_sampler=sampler, num_workers=d.num_workers,
                              generator=torch.Generator().manual_seed(t.seed))
    val_loader = make_val_loader(val_ds, cfg, rank, world)
    accum = layout.grad_accum
    steps_per_epoch = len(sampler) // accum
    assert steps_per_epoch >= 1, f"{len(sampler)} batches per epoch < grad_accum {accum}"
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)

    torch.manual_seed(t.seed + 1000 * stage)  # model init and dropout: the same on every rank and every rerun
    model = MusicTransformerVAEGAN(cfg.model)
    if init_from is not None:
        report, _ = init_from_model_file(init_from, model)
        print0(f"[stage {stage}] starting from {init_from}: {report.summary()}")
    opt_g = _adamw(model.generator_parameters(), o.lr, o)
    gan = cfg.model.is_gan
    opt_d = _adamw(model.discriminator_parameters(), o.disc_lr, o) if gan else None
    ds = is_deepspeed(accelerator)
    disc = None  # under DeepSpeed: the discriminator, kept outside the engine (see detach_discriminator)
    if ds:
        configure_deepspeed(accelerator, layout.micro_batch, accum, o.grad_clip,
                            universal=elastic.needs_universal(ds, (meta or {}).get("world_size"), world))
        if gan:
            disc = detach_discriminator(model).to(accelerator.device)
    if gan and not ds:
        model, opt_g, opt_d = accelerator.prepare(model, opt_g, opt_d)
    else:
        model, opt_g = accelerator.prepare(model, opt_g)
    extra_state = {"discriminator": disc, "disc_optimizer": opt_d} if disc is not None else None
    # D's phase bypasses the engine's forward: the engine hooks its outputs' backward as a generator step
    d_model = accelerator.unwrap_model(model) if disc is not None else model

    # -------------------------------------------------------------------------------------------- resume
    sdir = stage_dir(out_dir, stage)
    epoch, batch, step, best_val, bad_evals, early = 0, 0, 0, math.inf, 0, False
    changes = []
    if resume_from is not None:
        if meta.get("world_size", world) != world:
            print0(elastic.describe(layout, meta, stage, d.batch_size))
        elastic.load(accelerator, resume_from, elastic.needs_universal(ds, meta.get("world_size"), world))
        ckpt.load_extra(resume_from, extra_state)
        epoch, batch, step = meta["epoch"], elastic.start_batch(meta, layout), meta["step"]
        best_val, bad_evals, early = meta["best_val"], meta["bad_evals"], meta["early_stopped"]
        changes = elastic.world_size_changes(entry, meta, layout, resume_from)
        print0(f"[stage {stage}] resuming from {resume_from} (epoch {epoch}, batch {batch}, step {step})")

    def update_state(**changes) -> None:  # rank 0 only
        s = st.read_state(out_dir) or st.new_state()
        e = s["stages"].setdefault(str(stage), st.new_stage_entry(**run))
        e.update(run)
        e.update(changes, total_steps=total_steps, updated_at=st.now())
        s["current_stage"] = stage
        st.write_state(out_dir, s)

    stop = StopFlag(t.stop_margin_s).install()  # before "running" is recorded: a preemption from then on is caught
    if main:
        update_state(status="running", **({"world_size_changes": changes} if changes else {}))
    # the run id from the file just written (a fresh run had none before); one W&B run per stage, its id kept
    run_id = (st.read_state(out_dir) or {}).get("run_id", "aurl") if main else "aurl"
    tracker = Trackers(tracker_kind, out_dir, stage, run_id, cfg.logging.wandb_project, cfg.to_dict(), enabled=main,
                       wandb_run_id=(entry or {}).get("wandb_run_id"))
    if main and tracker.wandb_run_id:
        update_state(wandb_run_id=tracker.wandb_run_id)

    def save(reason: str):
        # "sample": the global data cursor, what an elastic resume on another number of processes starts from
        meta = {"stage": stage, "epoch": epoch, "batch": batch, "sample": batch * layout.micro_batch * world,
                "best_val": best_val, "bad_evals": bad_evals, "early_stopped": early, "reason": reason}

        def on_commit(path: Path) -> None:
            update_state(epoch=epoch, step=step, batch=batch, last_checkpoint=str(path),
                         best_val_loss=None if math.isinf(best_val) else best_val,
                         best_checkpoint=str(best_path(out_dir, stage)) if best_path(out_dir, stage).exists()
                         else None, tokens_per_s=tok_rate, eta_s=eta)

        ckpt.save(accelerator, sdir, step, meta, on_commit=on_commit, keep=cfg.checkpoint.keep, extra=extra_state)

    def validate_and_track() -> None:
        nonlocal best_val, bad_evals, early, last_val
        figs = evaluate(model, val_loader, accelerator, cfg, step)
        val = last_val = figs["loss"]  # nll (transformer) or nelbo (vae modes): see evaluate()
        if val < best_val:
            best_val, bad_evals = val, 0
            weights = export_weights(accelerator, model, disc)  # under ZeRO-3 a gather: every rank takes part
            if main:
                info = {val_name: val}
                extra = {"stage": stage, "step": step, "epoch": epoch}
                save_model_file(best_path(out_dir, stage), weights, cfg.model, info, extra, seq_len=d.seq_len)
                # the production model = the best of the most advanced stage reached
                save_model_file(out_dir / "checkpoints" / "best_model.pt", weights, cfg.model, info, extra, seq_len=d.seq_len)
        else:
            bad_evals += 1
            early = bool(t.patience and bad_evals >= t.patience)
        shown = {k: v for k, v in figs.items() if k not in ("loss", "tokens", "windows", "latent_dim")}
        if cfg.model.is_vae:
            print0(f"[stage {stage}] step {step} validation: {elbo.format_latent(figs)}")
        tracker.log({"val/loss": val, "val/best": best_val} | {f"val/{k}": v for k, v in shown.items()}, step,
                    split="val")

    # what selects the best model, by name in logs and model files: vae modes' bound is not an exact NLL
    val_name = "nelbo" if cfg.model.is_vae else "nll"

    # ------------------------------------------------------------------------------------------ the loop
    tok_rate, eta, last_val, logs = None, None, math.nan, {}
    bar = None
    if main and cfg.logging.progress_bar:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=step, desc=f"stage {stage}", dynamic_ncols=True)
    model.train()
    status = "completed"
    t0, tokens_seen, start_step = time.perf_counter(), 0, step
    last_step_end = last_progress_write = t0
    while epoch < t.epochs and step < total_steps and not early:
        sampler.set_epoch(epoch)
        if batch >= steps_per_epoch * accum:
            epoch, batch = epoch + 1, 0
            continue
        sampler.set_start_batch(batch)
        it = iter(train_loader)
        while batch < steps_per_epoch * accum and step < total_steps:
            # -------- one optimizer step = accum micro-batches
            set_lr(opt_g, lr_at(step, o.lr, o.warmup_steps, total_steps, o.min_lr_ratio))
            opt_g.zero_grad(set_to_none=True)
            logs: dict[str, float] = {}
            for micro in range(accum):
                b = next(it)
                ids, mask = b["input_ids"].to(accelerator.device), b["loss_mask"].to(accelerator.device)
                sync = accelerator.no_sync(model) if micro < accum - 1 else nullcontext()
                if ds:  # the engine accumulates, clips and steps inside backward at the last micro-batch
                    accelerator.sync_gradients = micro == accum - 1
                with sync, _autocast(cfg, accelerator):
                    out = model(ids, mask, step=step)
                    # DeepSpeed divides by its gradient_accumulation_steps (= accum) itself
                    accelerator.backward(out.loss if ds else out.loss / accum)
                for k, v in out.metrics.items():
                    logs[k] = logs.get(k, 0.0) + float(v) / accum
                tokens_seen += int(mask.sum()) * world
                batch += 1
            if o.grad_clip and not ds:  # DeepSpeed clips in its step (gradient_clipping)
                accelerator.clip_grad_norm_(model.module.generator_parameters() if hasattr(model, "module")
                                            else model.generator_parameters(), o.grad_clip)
            opt_g.step()
            if gan:  # the discriminator: its own optimizer, on the last micro-batch
                set_lr(opt_d, lr_at(step, o.disc_lr, o.warmup_steps, total_steps, o.min_lr_ratio))
                opt_d.zero_grad(set_to_none=True)
                with _autocast(cfg, accelerator):
                    dout = d_model(ids, mask, step=step, phase="discriminator")
                    if disc is None:
                        accelerator.backward(dout.loss)
                    else:  # D is outside the engine: plain backward (only D has grads), then average them
                        dout.loss.backward()
                        average_gradients(disc.parameters(), accelerator)
                opt_d.step()
                logs.update({k: float(v) for k, v in dout.metrics.items()})
            step += 1
            # -------- logging (rank 0), stop requests (all ranks agree), periodic validation + checkpoint
            now = time.perf_counter()
            # wall time since the previous step ended: data, forward/backward, optimizer and this bookkeeping
            step_s, last_step_end = now - last_step_end, now
            elapsed = now - t0
            tok_rate = tokens_seen / max(elapsed, 1e-9)
            steps_done = step - start_step
            eta = elapsed / max(1, steps_done) * (total_steps - step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.3f}", tok_s=f"{tok_rate:,.0f}")
            if main and now - last_progress_write >= PROGRESS_EVERY_S:  # --status stays current between commits
                update_state(epoch=epoch, step=step, batch=batch, tokens_per_s=tok_rate, eta_s=eta)
                last_progress_write = now
            if step % cfg.logging.log_every_steps == 0 or step == 1:
                logs = elastic.mean_over_ranks(logs, accelerator)  # the step's figures, whatever the world size
                tracker.log({f"train/{k}": v for k, v in logs.items()} | {"train/lr": opt_g.param_groups[0]["lr"],
                            "train/tokens_per_s": tok_rate, "train/step_s": step_s}, step, split="train")
            if batch >= steps_per_epoch * accum or step >= total_steps:
                break  # the epoch-end block validates, commits and checks for a stop
            if t.val_every_steps and step % t.val_every_steps == 0:
                validate_and_track()
            if stop.should_stop(accelerator):
                print0(f"[stage {stage}] stop requested ({stop.requested or 'another rank'}): saving")
                save("stop")
                status = "stopped"
                break
            if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0:
                save("every_steps")
            if early:
                break
        if status == "stopped":
            break
        if batch >= steps_per_epoch * accum or step >= total_steps:
            # -------- epoch end: validate, log one line, commit
            validate_and_track()
            print0(f"[stage {stage}] epoch {epoch + 1}/{t.epochs} step {step}/{total_steps} "
                   f"train loss {logs.get('loss', float('nan')):.4f} val {val_name} {last_val:.4f} (best {best_val:.4f}) "
                   f"{tok_rate or 0:,.0f} tok/s")
            if batch >= steps_per_epoch * accum:
                epoch, batch = epoch + 1, 0
            save("epoch_end")
            last_step_end = time.perf_counter()  # step_s times steps, not validations and saves
            if stop.should_stop(accelerator):
                print0(f"[stage {stage}] stop requested ({stop.requested or 'another rank'}): committed")
                status = "stopped"
                break
        elif early:  # stopped early by a mid-epoch validation: commit where it stopped
            print0(f"[stage {stage}] early stop at step {step}: {bad_evals} validations without improvement")
            save("early_stop")

    # ------------------------------------------------------------------------------------------- wrap up
    stop.uninstall()
    if bar is not None:
        bar.close()
    if main:
        if status == "completed":
            update_state(status="completed", epoch=epoch, step=step, batch=batch,
                         best_val_loss=None if math.isinf(best_val) else best_val,
                         best_checkpoint=str(best_path(out_dir, stage)) if best_path(out_dir, stage).exists()
                         else None)
            if on_complete is not None:  # the stage-end evaluation: its media go to this stage's trackers
                on_complete(tracker, step)
        else:
            update_state(status="stopped")
    tracker.close()
    accelerator.wait_for_everyone()
    accelerator.free_memory()
    return status


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


def resume_point(out_dir: Path, stage: int, entry: dict | None, run: dict) -> tuple[Path | None, str | None]:
    """Rank 0: (the committed checkpoint the stage resumes from, or None; the refusal, or None)."""
    sdir = stage_dir(out_dir, stage)
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


def copy_best(out_dir: Path, stage: int) -> None:
    """After a stage: best_model.pt = this stage's best (the most advanced stage reached)."""
    src = best_path(out_dir, stage)
    if src.exists():
        shutil.copy2(src, out_dir / "checkpoints" / "best_model.pt")
        if src.with_suffix(".json").exists():
            shutil.copy2(src.with_suffix(".json"), out_dir / "checkpoints" / "best_model.json")


