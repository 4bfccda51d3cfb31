"""The trainer's validation: the figures that select a stage's best model, over every validation window once.

evaluate() runs the model's phase="validate" (aurl.model.elbo), the same code aurl.evaluate's likelihood
uses, so the trainer's best-model value and the stage-end report's NLL are one number. One caveat: a stage
that trains in bf16 (train.mixed_precision) validates under the same bf16 autocast, for the speed it trains
at, while the stage-end evaluation scores in fp32; there the two differ by bf16's rounding.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch.utils.data import DataLoader

from aurl.config import StageConfig
from aurl.data.dataset import EpochBatchSampler, WindowDataset
from aurl.model import elbo


def autocast(cfg: StageConfig, accelerator):
    """The forward's autocast: bf16 when train.mixed_precision asks for it, else nothing."""
    if cfg.train.mixed_precision == "bf16":
        return torch.autocast(device_type=accelerator.device.type, dtype=torch.bfloat16)
    return nullcontext()


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
        with autocast(cfg, accelerator):
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
