"""aurl.train.engine: a plain launch (one process, no DeepSpeed) gets the DDP engine, with nothing wrapping
the model. (The DeepSpeed engine runs in test_deepspeed.py.)"""

from __future__ import annotations

from test_trainer import TINY

from aurl.train.pipeline import load_pipeline, make_accelerator


def test_plain_launch_gets_the_ddp_engine():
    from aurl.model import MusicTransformerVAEGAN
    from aurl.train.engine import DDPEngine, Engine
    from aurl.train.trainer import _adamw

    cfg = load_pipeline(TINY, ["model.mode=vae_gan"])[3]
    model = MusicTransformerVAEGAN(cfg.model)
    opt_g, opt_d = _adamw(model.generator_parameters(), 1e-3, cfg.optim), _adamw(model.discriminator_parameters(),
                                                                                  1e-3, cfg.optim)
    engine = Engine.prepare(make_accelerator("no"), model, opt_g, opt_d, cfg)
    assert isinstance(engine, DDPEngine) and engine.extra_state is None
    assert engine.unwrap() is model  # one process: nothing wraps it
