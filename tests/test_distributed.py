"""aurl.train.distributed: apply_speed_options compiles a model in place (its state dict unchanged). (The
one-graph forward and activation checkpointing: test_speed.py; the DeepSpeed pieces run in test_deepspeed.py
and test_plan.py.)"""

from __future__ import annotations

import torch
from test_speed import CpuAccelerator, batch, tiny

from aurl.config import TrainConfig
from aurl.model import MusicTransformerVAEGAN


def test_compile_in_place_keeps_the_state_dict():
    """train.compile compiles in place: the same module, the same state-dict keys (no `_orig_mod.`), and a
    checkpoint of it loads into an uncompiled model; the compiled forward is the eager one up to rounding."""
    torch.manual_seed(0)
    eager = MusicTransformerVAEGAN(tiny("vae")).eval()
    compiled = MusicTransformerVAEGAN(tiny("vae")).eval()
    compiled.load_state_dict(eager.state_dict())
    from aurl.train.distributed import apply_speed_options

    apply_speed_options(compiled, TrainConfig(compile=True), CpuAccelerator())
    keys = list(compiled.state_dict())
    assert keys == list(eager.state_dict()) and len(keys) > 20
    assert not any("_orig_mod" in k for k in keys)
    fresh = MusicTransformerVAEGAN(tiny("vae"))
    fresh.load_state_dict(compiled.state_dict(), strict=True)
    ids, mask = batch()
    torch._dynamo.reset()
    with torch.no_grad():
        a, b = eager(ids, mask).loss, compiled(ids, mask).loss
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it really ran compiled
    assert abs(float(a) - float(b)) < 1e-4, (float(a), float(b))  # measured: ~1e-6 (fused kernels' rounding)
