"""What the stage loop does differently under DeepSpeed ZeRO (accelerate_configs/deepspeed_*.yaml).

- Batch, accumulation, clipping: the stage config's values are written into the DeepSpeed config before
  prepare (configure_deepspeed). DeepSpeed does the accumulation: the loop calls accelerator.backward on every
  micro-batch with sync_gradients False until the last one, and the engine then clips (gradient_clipping),
  steps and zeroes inside that last backward. Why not gradient_accumulation_steps=1 and our own accumulation:
  the engine would then step on every micro-batch, and under ZeRO-2/3 the gradients are sharded (p.grad is
  not the full gradient), so the loop's own clip_grad_norm_ and no_sync cannot work either.
- Two optimizers (stage 3): a DeepSpeed engine takes one optimizer, and ZeRO-3 partitions every parameter
  of the module it wraps. So the discriminator leaves the module tree before prepare (detach_discriminator):
  the engine holds the generator and its optimizer; the discriminator is a plain module, whole on every
  rank, with its own torch AdamW; its gradients are averaged over ranks with one all-reduce
  (average_gradients) so every rank keeps the same D. The model still reaches it as `self.disc`, so both
  phases run unchanged (the generator phase's frozen-D functional_call sees plain tensors, not ZeRO-3
  shards). D and its optimizer are saved next to the engine's checkpoint by rank 0 (checkpoint.save extra).
- Best-model export: ZeRO-3 weights are sharded; accelerator.get_state_dict gathers them (a collective: every
  rank calls export_weights), and rank 0 writes plain fp32 weights (+ D) that load without DeepSpeed.
"""

from __future__ import annotations

import torch


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def configure_deepspeed(accelerator, micro_batch: int, grad_accum: int, grad_clip: float | None,
                        universal: bool = False) -> None:
    """Before prepare: the stage's micro-batch, accumulation and clipping in the DeepSpeed config (each stage
    builds a new engine from it), and the ZeRO-3 16-bit gather the best-model export needs. universal: the
    engine will load a universal checkpoint (an elastic resume, aurl.train.elastic)."""
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["checkpoint"] = {"load_universal": universal}  # read when the engine is built
    config["train_micro_batch_size_per_gpu"] = micro_batch
    config["gradient_accumulation_steps"] = grad_accum
    config["train_batch_size"] = micro_batch * grad_accum * accelerator.num_processes
    config["gradient_clipping"] = float(grad_clip or 0.0)  # 0 = off
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    accelerator.gradient_accumulation_steps = grad_accum  # what accelerate would otherwise warn about


def detach_discriminator(model: torch.nn.Module) -> torch.nn.Module:
    """Take model.disc out of the module tree (so the engine neither sees nor partitions it) while the model
    keeps using it as self.disc; it follows the model's train/eval mode at every forward."""
    disc = model.disc
    del model._modules["disc"]
    model.__dict__["disc"] = disc  # a plain attribute: found by self.disc, not by parameters()/state_dict()

    def follow_mode(module, _args) -> None:  # returns None: a pre-hook's return value would replace the inputs
        disc.train(module.training)

    model.register_forward_pre_hook(follow_mode)
    return disc


@torch.no_grad()
def average_gradients(params, accelerator) -> None:
    """Mean of each gradient over ranks, in one flat all-reduce."""
    if accelerator.num_processes == 1:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= accelerator.num_processes
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def export_weights(accelerator, model, disc: torch.nn.Module | None):
    """What save_model_file gets: the unwrapped model (no DeepSpeed), or under DeepSpeed a plain fp32 state
    dict gathered from the engine (+ the detached discriminator's weights). Call on every rank: under ZeRO-3
    the gather is a collective; only rank 0's result holds the weights."""
    if not is_deepspeed(accelerator):
        return accelerator.unwrap_model(model) if accelerator.is_main_process else None
    state = accelerator.get_state_dict(model)  # ZeRO-3: the 16-bit gather (fp32 when training in fp32)
    if not accelerator.is_main_process:
        return None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    if disc is not None:
        state.update({f"disc.{k}": v.detach().float() for k, v in disc.state_dict().items()})
    return state


def set_find_unused_parameters(accelerator, model_cfg) -> None:
    """Before prepare: DDP looks for unused parameters only in vae_gan, whose generator phase leaves D's
    weights out (they enter detached) and whose discriminator phase leaves G's out (no-grad fakes). In the
    other modes every parameter gets a gradient at every step, and the search would cost a traversal of the
    autograd graph per step and warn on every rank. One Accelerator serves all stages of a process, so
    the setting is made per stage, on its DDP kwargs handler."""
    from accelerate.utils import DistributedDataParallelKwargs

    if is_deepspeed(accelerator):  # no DDP wrapper
        return
    accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=model_cfg.is_gan)


def apply_speed_options(model: torch.nn.Module, train_cfg, accelerator) -> None:
    """Before prepare, on the bare model: DDP's unused-parameter search where the mode needs it
    (set_find_unused_parameters), train.activation_checkpointing, then train.compile. The compile is
    in place (nn.Module.compile): the module and its state dict keep their names (no `_orig_mod.` prefix),
    so checkpoints, resume and the best-model export do not change, and DDP / the DeepSpeed engine wrap the
    compiled module like any other."""
    from aurl.console import UserError

    set_find_unused_parameters(accelerator, model.cfg)
    model.set_activation_checkpointing(train_cfg.activation_checkpointing)
    if not train_cfg.compile:
        return
    if is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3:
        # ZeRO-3 gathers and frees each parameter in hooks around every submodule's forward, which a
        # compiled forward does not run in order
        raise UserError("train.compile = true is not supported under DeepSpeed ZeRO-3 "
                        "(accelerate_configs/deepspeed_zero3*.yaml): set train.compile=false or use ZeRO-2")
    model.compile()
