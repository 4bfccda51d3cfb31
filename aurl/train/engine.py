"""The prepared model and its optimizers, and the few things a step does differently under DeepSpeed.

The stage trainer talks to one Engine and never asks which launch it runs under:

    engine = Engine.prepare(accelerator, model, opt_g, opt_d, cfg, layout, universal)  # DDP or DeepSpeed
    with engine.micro_batch(micro, accum): engine.backward(loss, accum)  # generator, per micro-batch
    engine.clip(grad_clip); opt_g.step()
    engine.discriminator_step(ids, mask, step)                          # vae_gan
    engine.export_weights()                                             # every rank: the best model

DDPEngine: Accelerate's DDP wrapper (or no wrapper on one process); we accumulate (no_sync, loss / accum)
and clip. DeepSpeedEngine: the engine accumulates, clips and steps inside the last micro-batch's backward,
and the discriminator lives outside it (why: aurl.train.distributed).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from aurl.config import StageConfig
from aurl.model.checkpoint import unwrap
from aurl.train.distributed import (
    average_gradients,
    configure_deepspeed,
    detach_discriminator,
    export_weights,
    is_deepspeed,
)
from aurl.train.elastic import Layout


class Engine:
    """model: as prepared (the forward of a training step); unwrap(): the MusicTransformerVAEGAN itself."""

    def __init__(self, accelerator, model, opt_g, opt_d):
        self.accelerator, self.model, self.opt_g, self.opt_d = accelerator, model, opt_g, opt_d

    @staticmethod
    def prepare(accelerator, model, opt_g, opt_d, cfg: StageConfig, layout: Layout | None = None,
                universal: bool = False) -> Engine:
        """accelerator.prepare the model and optimizers the way this launch needs. layout: this launch's split
        of the global batch (aurl.train.elastic; None: the config's); universal: the checkpoint to resume from
        is a DeepSpeed one of another number of processes (resume.Decision)."""
        kind = DeepSpeedEngine if is_deepspeed(accelerator) else DDPEngine
        layout = layout or Layout(accelerator.num_processes, cfg.data.batch_size, cfg.optim.grad_accum)
        return kind.wrap(accelerator, model, opt_g, opt_d, cfg, layout, universal)

    def unwrap(self) -> torch.nn.Module:
        return unwrap(self.model)

    @property
    def extra_state(self) -> dict | None:
        """Objects checkpointed beside accelerator.save_state (checkpoint.save's `extra`)."""
        return None

    def micro_batch(self, micro: int, accum: int):
        """The context of micro-batch `micro` of `accum`: gradients are synchronized on the last one only."""
        return self.accelerator.no_sync(self.model) if micro < accum - 1 else nullcontext()

    def export_weights(self):
        """What save_model_file gets on rank 0 (None elsewhere); call on every rank (a ZeRO-3 gather)."""
        return export_weights(self.accelerator, self.model, None)


class DDPEngine(Engine):
    @classmethod
    def wrap(cls, accelerator, model, opt_g, opt_d, cfg: StageConfig, layout: Layout, universal: bool) -> DDPEngine:
        if opt_d is not None:
            model, opt_g, opt_d = accelerator.prepare(model, opt_g, opt_d)
        else:
            model, opt_g = accelerator.prepare(model, opt_g)
        return cls(accelerator, model, opt_g, opt_d)

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        self.accelerator.backward(loss / accum)

    def clip(self, max_norm: float) -> None:
        if max_norm:
            self.accelerator.clip_grad_norm_(self.unwrap().generator_parameters(), max_norm)

    def discriminator_step(self, ids, mask, step: int):
        """D's loss on this micro-batch, backward; returns the model output (opt_d steps after)."""
        out = self.model(ids, mask, step=step, phase="discriminator")
        self.accelerator.backward(out.loss)
        return out


class DeepSpeedEngine(Engine):
    @classmethod
    def wrap(cls, accelerator, model, opt_g, opt_d, cfg: StageConfig, layout: Layout,
             universal: bool) -> DeepSpeedEngine:
        configure_deepspeed(accelerator, layout.micro_batch, layout.grad_accum, cfg.optim.grad_clip, universal)
        disc = detach_discriminator(model).to(accelerator.device) if opt_d is not None else None
        model, opt_g = accelerator.prepare(model, opt_g)
        engine = cls(accelerator, model, opt_g, opt_d)
        engine.disc = disc
        return engine

    @property
    def extra_state(self) -> dict | None:
        return {"discriminator": self.disc, "disc_optimizer": self.opt_d} if self.disc is not None else None

    def micro_batch(self, micro: int, accum: int):
        # the engine accumulates, clips and steps inside backward at the last micro-batch
        self.accelerator.sync_gradients = micro == accum - 1
        return super().micro_batch(micro, accum)

    def backward(self, loss: torch.Tensor, accum: int) -> None:
        self.accelerator.backward(loss)  # DeepSpeed divides by its gradient_accumulation_steps (= accum) itself

    def clip(self, max_norm: float) -> None:
        pass  # DeepSpeed clips in its step (gradient_clipping)

    def discriminator_step(self, ids, mask, step: int):
        # bypasses the engine's forward, which would hook the outputs' backward as a generator step; D is
        # outside the engine: plain backward (only D has grads), then average them over ranks
        out = self.unwrap()(ids, mask, step=step, phase="discriminator")
        out.loss.backward()
        average_gradients(self.disc.parameters(), self.accelerator)
        return out

    def export_weights(self):
        return export_weights(self.accelerator, self.model, self.disc)
