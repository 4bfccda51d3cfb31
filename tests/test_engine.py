"""aurl.train.engine: a plain launch (one process, no DeepSpeed) gets the DDP engine, with nothing wrapping
the model; its gradient accumulation and clipping, on the real engine. (The DeepSpeed engine runs in
test_deepspeed.py.)"""

from __future__ import annotations

import torch
from test_trainer import TINY
from test_vaegan import batch, tiny

from aurl.model import MusicTransformerVAEGAN
from aurl.train.pipeline import load_pipeline, make_accelerator


def ddp_engine(model_cfg, opt_d: bool = False):
    from aurl.train.engine import Engine
    from aurl.train.trainer import _adamw

    cfg = load_pipeline(TINY, [])[3]
    model = MusicTransformerVAEGAN(model_cfg)
    opt_g = _adamw(model.generator_parameters(), 1e-3, cfg.optim)
    opt_d = _adamw(model.discriminator_parameters(), 1e-3, cfg.optim) if opt_d else None
    return Engine.prepare(make_accelerator("no"), model, opt_g, opt_d, cfg)


def test_plain_launch_gets_the_ddp_engine():
    from aurl.train.engine import DDPEngine

    cfg = load_pipeline(TINY, ["model.mode=vae_gan"])[3]
    engine = ddp_engine(cfg.model, opt_d=True)
    assert isinstance(engine, DDPEngine) and engine.extra_state is None
    assert isinstance(engine.unwrap(), MusicTransformerVAEGAN) and engine.unwrap() is engine.model  # nothing wraps it


def test_accumulated_gradient_is_the_mean_of_the_micro_batches():
    """accum micro-batches through micro_batch/backward leave the mean of their gradients (loss / accum), so
    train.grad_clip and the optimizer see the same gradient whatever the split of the batch. Measured: the
    largest difference from the mean computed by hand 2.2e-8 (float32 sums in another order; the largest
    gradient entry 0.05); bound 1e-7.
    (Adam's first steps hardly see a scale of the gradient: a loss not divided by accum passes the runs.)"""
    torch.manual_seed(0)
    engine = ddp_engine(tiny("transformer"))
    model = engine.unwrap()
    micro = [batch(b=2, t=24, seed=s) for s in range(3)]
    by_hand = None
    for ids, mask in micro:
        grads = torch.autograd.grad(model(ids, mask, step=0).loss, model.generator_parameters())
        by_hand = grads if by_hand is None else [a + g for a, g in zip(by_hand, grads, strict=True)]
    by_hand = [g / len(micro) for g in by_hand]
    for i, (ids, mask) in enumerate(micro):
        with engine.micro_batch(i, len(micro)):
            engine.backward(engine.model(ids, mask, step=0).loss, len(micro))
    params = model.generator_parameters()
    diff = max(float((p.grad - g).abs().max()) for p, g in zip(params, by_hand, strict=True))
    assert len(params) > 10 and all(p.grad is not None for p in params)
    assert diff <= 1e-7, diff
    assert max(float(g.abs().max()) for g in by_hand) > 1e3 * 1e-7  # the bound is far below the gradient


def _grad_norm(params) -> float:
    """The global L2 norm of the gradients the parameters hold, as clip_grad_norm_ measures it."""
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))


def test_clipping_scales_the_generator_gradient_only():
    """clip(max_norm) brings the generator's gradient to norm max_norm and leaves the discriminator's as the
    last discriminator step left it (it is still there at the next generator step: opt_d zeroes it only
    before its own step). Measured: the clipped norm off max_norm by 3.1e-7 relative (float32); bound 2e-6."""
    torch.manual_seed(0)
    engine = ddp_engine(tiny("vae_gan"), opt_d=True)
    model = engine.unwrap()
    ids, mask = batch()
    engine.discriminator_step(ids, mask, step=10)  # D's gradient, as the previous step leaves it
    disc = [p.grad.clone() for p in model.discriminator_parameters()]
    assert disc and any(g.abs().sum() > 0 for g in disc)
    engine.backward(engine.model(ids, mask, step=10).loss, 1)
    gen = model.generator_parameters()
    max_norm = _grad_norm(gen) / 4
    engine.clip(max_norm)
    clipped = _grad_norm(gen)
    assert abs(clipped - max_norm) <= 2e-6 * max_norm, (clipped, max_norm)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.discriminator_parameters(), disc, strict=True))
    assert len(disc) == len(model.discriminator_parameters()) > 3
