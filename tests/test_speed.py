"""train.compile and train.activation_checkpointing (aurl.train.distributed.apply_speed_options), on tiny
models in this process: the forward compiles to one graph in every mode, and checkpointing computes the same
loss and gradients while keeping far fewer bytes for the backward pass. (A compiled model keeps its state
dict: test_distributed.py; the chunked head loss: test_head_loss.py.)"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aurl.config import TrainConfig
from aurl.model import MusicTransformerVAEGAN
from aurl.model.config import ModelConfig
from aurl.vocab import PAD_ID, VOCAB_SIZE


def tiny(mode: str) -> ModelConfig:
    # every branch of the forward on: sounding feature, BN-VAE (its first-batch init), word dropout
    return ModelConfig(mode=mode, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, encoder_layers=1,
                       disc_d_model=32, disc_layers=1, disc_heads=2, sounding_embedding=True, mu_bn_gamma=0.6,
                       word_dropout=0.1, adv_warmup_steps=0)


def batch(b: int = 4, t: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB_SIZE, (b, t), generator=g)
    ids[0, -5:] = PAD_ID  # a padded window: the encoder's and D's key mask is on
    return ids, ids != PAD_ID


class CpuAccelerator:  # what apply_speed_options reads of an Accelerator: no DeepSpeed
    from accelerate.utils import DistributedType

    distributed_type = DistributedType.NO
    ddp_handler = None


PHASES = [("transformer", "generator", False), ("vae", "generator", False), ("vae_gan", "generator", False),
          ("vae_gan", "discriminator", False), ("vae", "generator", True), ("vae_gan", "generator", True)]


@pytest.mark.parametrize("mode,phase,checkpointing", PHASES,
                         ids=[f"{m}-{p}-{'ckpt' if c else 'plain'}" for m, p, c in PHASES])
def test_training_forward_is_one_graph(mode, phase, checkpointing):
    """Zero graph breaks: torch.compile traces the whole training forward (and the checkpointed blocks)."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode)).train()
    model.set_activation_checkpointing(checkpointing)
    ids, mask = batch()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(ids, mask, step=3, phase=phase)
    assert explained.graph_break_count == 0, [str(r.reason) for r in explained.break_reasons]
    assert explained.graph_count == 1 and explained.op_count > 50  # it traced the model, not an empty call


def saved_bytes(model, ids, mask, phase="generator") -> tuple[int, torch.Tensor, dict[str, torch.Tensor]]:
    """(bytes the autograd graph keeps for the backward pass, the loss, the gradients)."""
    kept = []

    def pack(t):
        kept.append(t.numel() * t.element_size())
        return t

    torch.manual_seed(1)
    model.zero_grad(set_to_none=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(ids, mask, step=3, phase=phase)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return sum(kept), out.loss.detach(), grads


@pytest.mark.parametrize("mode", ["transformer", "vae", "vae_gan"])
def test_activation_checkpointing_same_gradients_less_kept(mode):
    """The key through apply_speed_options: same loss and gradients (dropout masks replayed), and the
    forward keeps at most half the bytes. Measured at this size: 0.10x (transformer), 0.12x (vae), 0.30x
    (vae_gan: the logits and the Gumbel fakes' softmax that the adversarial loss needs stay, 2 x 774 floats a
    token, and the discriminator is not checkpointed); each block's input stays."""
    from aurl.train.distributed import apply_speed_options

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(dataclasses.replace(tiny(mode), d_model=64, d_ff=256, n_layers=3)).train()
    ids, mask = batch(b=4, t=64)
    base_bytes, base_loss, base_grads = saved_bytes(model, ids, mask)
    apply_speed_options(model, TrainConfig(activation_checkpointing=True), CpuAccelerator())
    ck_bytes, ck_loss, ck_grads = saved_bytes(model, ids, mask)
    assert ck_bytes <= 0.5 * base_bytes, (ck_bytes, base_bytes)
    # measured: loss differs by <= 1e-6 (the chunked sum's order), gradients by <= 1e-7 absolute
    assert abs(float(ck_loss) - float(base_loss)) < 1e-5
    assert sorted(ck_grads) == sorted(base_grads) and len(base_grads) > 10
    for name, g in base_grads.items():
        torch.testing.assert_close(ck_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)
