"""One stage of training: StageTrainer(cfg, stage, run_dir, accelerator, init_from).train() -> status.

    setup()        data (cache, windows), the resume decision (which checkpoint; this launch's split of the
                   global batch), loaders, and the model, prepared into an Engine (DDP or DeepSpeed)
    resume()       the checkpoint decided on, if any: weights, optimizers, RNGs, data cursor
    start()        the state file says "running"; trackers, the stop flag
    train_step()   one optimizer step: accum generator micro-batches, then (vae_gan) the discriminator
    after_step()   log; validate, commit, stop as configured; at an epoch end validate and commit
    finish()       the state file says "completed" or "stopped"; the stage-end hook; trackers closed

Every rank runs all of it; rank 0 alone writes the state file, the best model and the logs.

Exact resume: the data order is a pure function of (seed, epoch) (EpochBatchSampler, not prepared by
Accelerate), augmentation a pure function of (seed, epoch, index), checkpoints are taken only at
optimizer-step boundaries and hold model, optimizers, every rank's RNG states (accelerator.save_state) and
the data cursor (meta.json: epoch, next batch, and the global sample index "sample" from which a launch on
another number of processes resumes: aurl.train.elastic). The learning rate is a pure function of the step.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from aurl.config import StageConfig
from aurl.console import print0
from aurl.data.cache import ensure_cache
from aurl.data.dataset import EpochBatchSampler, WindowDataset
from aurl.model import MusicTransformerVAEGAN, elbo
from aurl.model.checkpoint import init_from_model_file, save_model_file
from aurl.rundir import RunDir
from aurl.train import checkpoint as ckpt
from aurl.train import elastic, resume
from aurl.train import state as st
from aurl.train.distributed import apply_speed_options
from aurl.train.engine import Engine
from aurl.train.preemption import StopFlag
from aurl.train.schedule import lr_at, set_lr
from aurl.train.tracking import Trackers
from aurl.train.validation import autocast, evaluate, make_val_loader

PROGRESS_EVERY_S = 30.0  # rank 0 refreshes step, tokens/s and ETA in the state file at least this often


def _adamw(params, lr: float, o) -> torch.optim.AdamW:
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(o.beta1, o.beta2))


@dataclass
class Cursor:
    """Where the stage stands: what a committed checkpoint's meta.json holds, and so what a resume restores."""

    epoch: int = 0
    batch: int = 0
    """Micro-batches of this epoch already taken (by each rank)."""
    step: int = 0
    best_val: float = math.inf
    bad_evals: int = 0
    """Validations since the last improvement (train.patience)."""
    early_stopped: bool = False


@dataclass
class Throughput:
    """Tokens/s, ETA and step time since this process started the stage (a resumed stage starts afresh)."""

    start_step: int
    total_steps: int
    tokens: int = 0
    tokens_per_s: float | None = None
    eta_s: float | None = None

    def __post_init__(self):
        self.t0 = self.last_step_end = self.last_write = time.perf_counter()

    def tick(self, step: int) -> float:
        """After an optimizer step: refresh the rates; the wall time since the previous step ended (data,
        forward/backward, optimizer and the bookkeeping after it)."""
        now = time.perf_counter()
        step_s, self.last_step_end = now - self.last_step_end, now
        elapsed = now - self.t0
        self.tokens_per_s = self.tokens / max(elapsed, 1e-9)
        self.eta_s = elapsed / max(1, step - self.start_step) * (self.total_steps - step)
        return step_s


class StageTrainer:
    def __init__(self, cfg: StageConfig, stage: int, run_dir: RunDir, accelerator, init_from: Path | None = None,
                 on_complete=None):
        """on_complete(tracker, step): rank 0, once the completed stage is recorded, before its trackers close."""
        self.cfg, self.stage, self.run_dir, self.accelerator = cfg, stage, run_dir, accelerator
        self.init_from, self.on_complete = init_from, on_complete
        self.main = accelerator.is_main_process
        self.cursor = Cursor()
        self.last_val = math.nan
        # what selects the best model, by name in logs and model files: vae modes' bound is not an exact NLL
        self.val_name = "nelbo" if cfg.model.is_vae else "nll"
        self._batches = None  # this epoch's iterator over the training loader
        self.world_size_changes: list[dict] = []  # the stage's record, this resume's change appended

    def train(self) -> str:
        """Train the stage from wherever it stands; "completed", or "stopped" (preempted, committed)."""
        self.setup()
        self.resume()
        self.start()
        status = "completed"
        while self.running():
            logs = self.train_step()
            if self.after_step(logs) == "stopped":
                status = "stopped"
                break
        self.finish(status)
        return status

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        self.setup_data()
        self.decide_resume()  # before the sampler and prepare: on another number of processes the split changes
        self.setup_loaders()
        self.setup_model()

    def setup_data(self) -> None:
        d, t = self.cfg.data, self.cfg.train
        with self.accelerator.main_process_first():  # rank 0 builds the cache, the others then open it
            self.cache = ensure_cache(d.data_dir, self.run_dir.cache(d.cache_dir), val_fraction=d.val_fraction,
                                      split_seed=d.split_seed, progress=False, corpus_limit=d.corpus_limit)
        self.train_ds = WindowDataset(self.cache, "train", seq_len=d.seq_len, augment=self.cfg.augment, seed=t.seed,
                                      start_share=d.start_share)
        self.val_ds = WindowDataset(self.cache, "val", seq_len=d.seq_len, augment=None, seed=t.seed)

    def decide_resume(self) -> None:
        """Rank 0's decision (refused with a UserError under changed settings): the checkpoint to resume from
        and this launch's split of the stage's global batch (aurl.train.elastic), recorded in the state entry."""
        self.run_record = resume.run_record(self.cfg, self.accelerator, self.cache.fingerprint)
        self.decision = resume.decide(self.accelerator, self.run_dir, self.stage, self.run_record)
        self.entry, self.layout = self.decision.entry, self.decision.layout
        self.run_record.update(self.layout.record())

    def setup_loaders(self) -> None:
        d, t, acc = self.cfg.data, self.cfg.train, self.accelerator
        rank, world = acc.process_index, acc.num_processes
        self.sampler = EpochBatchSampler(len(self.train_ds), self.layout.micro_batch, seed=t.seed, rank=rank,
                                         world_size=world)
        # own generators: iter(DataLoader) draws a seed, and from the global RNG it would shift dropout's stream
        # after a mid-epoch resume (the resumed run starts its iterator at another point of that stream)
        self.train_loader = DataLoader(self.train_ds, batch_sampler=self.sampler, num_workers=d.num_workers,
                                       generator=torch.Generator().manual_seed(t.seed))
        accum = self.layout.grad_accum
        steps_per_epoch = len(self.sampler) // accum
        assert steps_per_epoch >= 1, f"{len(self.sampler)} batches per epoch < grad_accum {accum}"
        self.batches_per_epoch = steps_per_epoch * accum
        self.total_steps = t.epochs * steps_per_epoch
        if t.max_steps:
            self.total_steps = min(self.total_steps, t.max_steps)

    @functools.cached_property
    def val_loader(self) -> DataLoader:
        """Built at the first validation, not in setup: it lays the validation windows out (every piece's
        states, aurl/data/val_tiling.py; seconds on a 100,000-file cache), which the first step need not wait for."""
        acc = self.accelerator
        return make_val_loader(self.val_ds, self.cfg, acc.process_index, acc.num_processes)

    def setup_model(self) -> None:
        """The model (seeded init, or the previous stage's best weights), its optimizers, and the Engine.
        Whatever wraps the model itself (compile, activation checkpointing) goes between the model and
        Engine.prepare; what differs between DDP and DeepSpeed goes into the Engine."""
        o = self.cfg.optim
        torch.manual_seed(self.cfg.train.seed + 1000 * self.stage)  # init and dropout: the same on every rank
        model = MusicTransformerVAEGAN(self.cfg.model)
        if self.init_from is not None:
            report, _ = init_from_model_file(self.init_from, model)
            print0(f"[stage {self.stage}] starting from {self.init_from}: {report.summary()}")
        opt_g = _adamw(model.generator_parameters(), o.lr, o)
        opt_d = _adamw(model.discriminator_parameters(), o.disc_lr, o) if self.cfg.model.is_gan else None
        # DDP's unused-parameter search, activation checkpointing, compile: on the bare model, before prepare
        apply_speed_options(model, self.cfg.train, self.accelerator)
        self.engine = Engine.prepare(self.accelerator, model, opt_g, opt_d, self.cfg, self.layout,
                                     self.decision.universal)

    # ----------------------------------------------------------------------------------------------- resume
    def resume(self) -> None:
        """Restore the committed checkpoint rank 0 chose (decide_resume), on this launch's number of processes."""
        resume_from, meta, layout = self.decision.checkpoint, self.decision.meta, self.layout
        if resume_from is None:
            return
        if meta.get("world_size", layout.world_size) != layout.world_size:
            print0(elastic.describe(layout, meta, self.stage, self.cfg.data.batch_size))
        elastic.load(self.accelerator, resume_from, self.decision.universal)
        ckpt.load_extra(resume_from, self.engine.extra_state)
        self.cursor = Cursor(epoch=meta["epoch"], batch=elastic.start_batch(meta, layout), step=meta["step"],
                             best_val=meta["best_val"], bad_evals=meta["bad_evals"],
                             early_stopped=meta["early_stopped"])
        self.world_size_changes = elastic.world_size_changes(self.entry, meta, layout, resume_from)
        c = self.cursor
        if c.batch >= self.batches_per_epoch:  # committed at the very end of an epoch
            c.epoch, c.batch = c.epoch + 1, 0
        print0(f"[stage {self.stage}] resuming from {resume_from} (epoch {c.epoch}, batch {c.batch}, step {c.step})")

    def start(self) -> None:
        """Record "running", start the trackers, the stop flag and the progress bar."""
        self.stop = StopFlag(self.cfg.train.stop_margin_s).install()  # before "running": a stop from now is caught
        if self.main:
            self.record(status="running", **({"world_size_changes": self.world_size_changes}
                                             if self.world_size_changes else {}))
        # the run id from the file just written (a fresh run had none before); one W&B run per stage, its id kept
        run_id = (st.read_state(self.run_dir.root) or {}).get("run_id", "aurl") if self.main else "aurl"
        lg = self.cfg.logging
        self.tracker = Trackers(lg.tracker, self.run_dir.root, self.stage, run_id, lg.wandb_project,
                                self.cfg.to_dict(), enabled=self.main,
                                wandb_run_id=(self.entry or {}).get("wandb_run_id"))
        if self.main and self.tracker.wandb_run_id:
            self.record(wandb_run_id=self.tracker.wandb_run_id)
        self.bar = None
        if self.main and lg.progress_bar:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_steps, initial=self.cursor.step, desc=f"stage {self.stage}",
                            dynamic_ncols=True)
        self.speed = Throughput(self.cursor.step, self.total_steps)
        self.engine.model.train()

    def running(self) -> bool:
        c, t = self.cursor, self.cfg.train
        return c.epoch < t.epochs and c.step < self.total_steps and not c.early_stopped

    # ------------------------------------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        """One optimizer step over grad_accum micro-batches; the mean of their figures (+ D's, vae_gan)."""
        cfg, o, c, eng = self.cfg, self.cfg.optim, self.cursor, self.engine
        accum = self.layout.grad_accum
        set_lr(eng.opt_g, lr_at(c.step, o.lr, o.warmup_steps, self.total_steps, o.min_lr_ratio))
        eng.opt_g.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        for micro in range(accum):
            ids, mask = self.next_batch()
            with eng.micro_batch(micro, accum), autocast(cfg, self.accelerator):
                out = eng.model(ids, mask, step=c.step)
                eng.backward(out.loss, accum)
            for k, v in out.metrics.items():
                logs[k] = logs.get(k, 0.0) + float(v) / accum
            self.speed.tokens += int(mask.sum()) * self.accelerator.num_processes
            c.batch += 1
        eng.clip(o.grad_clip)
        eng.opt_g.step()
        if cfg.model.is_gan:  # the discriminator: its own optimizer, on the last micro-batch
            set_lr(eng.opt_d, lr_at(c.step, o.disc_lr, o.warmup_steps, self.total_steps, o.min_lr_ratio))
            eng.opt_d.zero_grad(set_to_none=True)
            with autocast(cfg, self.accelerator):
                dout = eng.discriminator_step(ids, mask, c.step)
            eng.opt_d.step()
            logs.update({k: float(v) for k, v in dout.metrics.items()})
        c.step += 1
        return logs

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next training micro-batch (input_ids, loss_mask) on this rank's device."""
        if self._batches is None:  # an epoch starts, or the run resumes inside one
            self.sampler.set_epoch(self.cursor.epoch)
            self.sampler.set_start_batch(self.cursor.batch)
            self._batches = iter(self.train_loader)
        b = next(self._batches)
        return b["input_ids"].to(self.accelerator.device), b["loss_mask"].to(self.accelerator.device)

    # ----------------------------------------------------------------------------------------- after a step
    def after_step(self, logs: dict[str, float]) -> str | None:
        """Log; then at an epoch end (or the last step) validate and commit, else validate, commit and early
        stop as configured. Stop requests are agreed by all ranks. Returns "stopped" when the stage stops here."""
        c, t, every = self.cursor, self.cfg.train, self.cfg.checkpoint.every_steps
        logs = self.log_step(logs)
        if c.batch >= self.batches_per_epoch or c.step >= self.total_steps:
            return self.end_epoch(logs)
        if t.val_every_steps and c.step % t.val_every_steps == 0:
            self.validate()
        if self.stop.should_stop(self.accelerator):
            print0(f"[stage {self.stage}] stop requested ({self.stop.requested or 'another rank'}): saving")
            self.commit("stop")
            return "stopped"
        if every and c.step % every == 0:
            self.commit("every_steps")
        if c.early_stopped:  # by this step's validation: commit where it stopped
            print0(f"[stage {self.stage}] early stop at step {c.step}: {c.bad_evals} validations without improvement")
            self.commit("early_stop")
        return None

    def end_epoch(self, logs: dict[str, float]) -> str | None:
        """The epoch's (or the stage's) last step: validate, one line, commit."""
        c = self.cursor
        self.validate()
        print0(f"[stage {self.stage}] epoch {c.epoch + 1}/{self.cfg.train.epochs} step {c.step}/{self.total_steps} "
               f"train loss {logs.get('loss', float('nan')):.4f} val {self.val_name} {self.last_val:.4f} "
               f"(best {c.best_val:.4f}) {self.speed.tokens_per_s or 0:,.0f} tok/s")
        if c.batch >= self.batches_per_epoch:
            c.epoch, c.batch, self._batches = c.epoch + 1, 0, None
        self.commit("epoch_end")
        self.speed.last_step_end = time.perf_counter()  # step_s times steps, not validations and saves
        if self.stop.should_stop(self.accelerator):
            print0(f"[stage {self.stage}] stop requested ({self.stop.requested or 'another rank'}): committed")
            return "stopped"
        return None

    def log_step(self, logs: dict[str, float]) -> dict[str, float]:
        """The step's bar, progress and tracker records; returns the logs (on a logged step averaged over the
        ranks, as the tracker got them)."""
        c, speed = self.cursor, self.speed
        step_s = speed.tick(c.step)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{logs['loss']:.3f}", tok_s=f"{speed.tokens_per_s:,.0f}")
        if self.main and speed.last_step_end - speed.last_write >= PROGRESS_EVERY_S:  # --status stays current
            self.record(epoch=c.epoch, step=c.step, batch=c.batch, tokens_per_s=speed.tokens_per_s, eta_s=speed.eta_s)
            speed.last_write = speed.last_step_end
        if c.step % self.cfg.logging.log_every_steps == 0 or c.step == 1:
            logs = elastic.mean_over_ranks(logs, self.accelerator)  # the step's figures, whatever the world size
            lr = self.engine.opt_g.param_groups[0]["lr"]
            self.tracker.log({f"train/{k}": v for k, v in logs.items()} | {
                "train/lr": lr, "train/tokens_per_s": speed.tokens_per_s, "train/step_s": step_s}, c.step,
                split="train")
        return logs

    def validate(self) -> None:
        """Validation figures; a better value writes the best model, a worse one counts toward patience."""
        c, t = self.cursor, self.cfg.train
        figs = evaluate(self.engine.model, self.val_loader, self.accelerator, self.cfg, c.step)
        val = self.last_val = figs["loss"]  # nll (transformer) or nelbo (vae modes): see validation.evaluate
        if val < c.best_val:
            c.best_val, c.bad_evals = val, 0
            self.save_best(val)
        else:
            c.bad_evals += 1
            c.early_stopped = bool(t.patience and c.bad_evals >= t.patience)
        shown = {k: v for k, v in figs.items() if k not in ("loss", "tokens", "windows", "latent_dim")}
        if self.cfg.model.is_vae:
            print0(f"[stage {self.stage}] step {c.step} validation: {elbo.format_latent(figs)}")
        self.tracker.log({"val/loss": val, "val/best": c.best_val} | {f"val/{k}": v for k, v in shown.items()},
                         c.step, split="val")

    def save_best(self, val: float) -> None:
        """The one writer of the stage's best.pt and of the run's best_model.pt (the production model: the
        best of the most advanced stage reached). Every rank calls it: under ZeRO-3 the export is a gather."""
        weights = self.engine.export_weights()
        if not self.main:
            return
        c, d = self.cursor, self.cfg.data
        info, extra = {self.val_name: val}, {"stage": self.stage, "step": c.step, "epoch": c.epoch}
        for path in (self.run_dir.best(self.stage), self.run_dir.best_model):
            save_model_file(path, weights, self.cfg.model, info, extra, seq_len=d.seq_len)

    def commit(self, reason: str) -> None:
        """A committed full-state checkpoint (aurl.train.checkpoint.save), then the state file points at it."""
        c = self.cursor
        # "sample": the global data cursor, what an elastic resume on another number of processes starts from
        meta = {"stage": self.stage, "epoch": c.epoch, "batch": c.batch,
                "sample": c.batch * self.layout.micro_batch * self.layout.world_size, "best_val": c.best_val,
                "bad_evals": c.bad_evals, "early_stopped": c.early_stopped, "reason": reason}

        def on_commit(path: Path) -> None:
            self.record(epoch=c.epoch, step=c.step, batch=c.batch, last_checkpoint=str(path), **self.best_record(),
                        tokens_per_s=self.speed.tokens_per_s, eta_s=self.speed.eta_s)

        ckpt.save(self.accelerator, self.run_dir.stage_checkpoints(self.stage), c.step, meta, on_commit=on_commit,
                  keep=self.cfg.checkpoint.keep, extra=self.engine.extra_state)

    # ------------------------------------------------------------------------------------------ the end
    def finish(self, status: str) -> None:
        self.stop.uninstall()
        if self.bar is not None:
            self.bar.close()
        c = self.cursor
        if self.main and status == "completed":
            self.record(status="completed", epoch=c.epoch, step=c.step, batch=c.batch, **self.best_record())
            if self.on_complete is not None:  # the stage-end evaluation: its media go to this stage's trackers
                self.on_complete(self.tracker, c.step)
        elif self.main:
            self.record(status="stopped")
        self.tracker.close()
        self.accelerator.wait_for_everyone()
        self.accelerator.free_memory()

    # ------------------------------------------------------------------------------------------ state file
    def record(self, **changes) -> None:
        """Rank 0: update this stage's entry of the state file."""
        s = st.read_state(self.run_dir.root) or st.new_state()
        e = s["stages"].setdefault(str(self.stage), st.new_stage_entry(**self.run_record))
        e.update(self.run_record)
        e.update(changes, total_steps=self.total_steps, updated_at=st.now())
        s["current_stage"] = self.stage
        st.write_state(self.run_dir.root, s)

    def best_record(self) -> dict:
        best, val = self.run_dir.best(self.stage), self.cursor.best_val
        return {"best_val_loss": None if math.isinf(val) else val,
                "best_checkpoint": str(best) if best.exists() else None}
