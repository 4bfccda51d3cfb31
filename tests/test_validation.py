"""aurl.train.validation: the trainer's validation sees every validation window exactly once over all ranks
(the first max_val_batches x batch_size of them when capped), every rank the same number of batches, so
its value depends neither on the number of processes nor on the batch size; it hands the model back in
training mode. (The value at 1, 2 and 3 real processes: test_val_exact.py.)"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from test_trainer import TINY
from test_vaegan import batch, tiny

from aurl.model import MusicTransformerVAEGAN
from aurl.train.pipeline import load_pipeline, make_accelerator
from aurl.train.validation import evaluate, make_val_loader


class Windows:
    """10 validation windows of 24 random tokens, indexed as the EpochBatchSampler indexes: (epoch, i)."""

    def __init__(self):
        self.ids, self.mask = batch(b=10, t=24, seed=3)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        _, i = key
        return {"input_ids": self.ids[i], "loss_mask": self.mask[i], "index": torch.tensor(i)}


def _stage(batch_size: int, cap: int):
    cfg = load_pipeline(TINY, [f"data.batch_size={batch_size}", "data.num_workers=0",
                               f"train.max_val_batches={cap}"])[1]
    return replace(cfg, model=tiny("transformer"))


@pytest.mark.parametrize("cap, seen", [(0, 10), (2, 6)])
def test_every_window_once_over_the_ranks(cap, seen):
    """Mutation: make_val_loader without its `limit` (max_val_batches ignored) -> the capped case fails."""
    for world in (1, 2, 3):
        per_rank = [[b["index"].tolist() for b in make_val_loader(Windows(), _stage(3, cap), rank, world)]
                    for rank in range(world)]
        assert sorted(i for rank in per_rank for b in rank for i in b) == list(range(seen)), (world, per_rank)
        assert len({len(rank) for rank in per_rank}) == 1  # the same number of batches (collectives match)


def test_the_value_does_not_depend_on_the_batch_size_and_the_model_goes_back_to_training():
    """Mutations: evaluate without its closing model.train() -> fails; without its model.eval() (dropout
    on in validation) or its @torch.no_grad (an autograd graph kept per batch) -> fails (seen by a hook on
    the forward)."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer")).train()
    forwards = []
    model.register_forward_pre_hook(lambda m, args: forwards.append((m.training, torch.is_grad_enabled())))
    accelerator = make_accelerator("no")
    figures = [evaluate(model, make_val_loader(Windows(), _stage(size, 0), 0, 1), accelerator, _stage(size, 0), 5)
               for size in (3, 4)]
    assert model.training and forwards == [(False, False)] * (4 + 3)  # 10 windows: 4 batches of 3, 3 of 4
    assert figures[0]["tokens"] == figures[1]["tokens"] == 10 * 23
    # float32 logits summed in float64: the two batchings differ by 1.3e-7 (measured 2026-12-01)
    assert figures[0]["loss"] == pytest.approx(figures[1]["loss"], abs=1e-5) and figures[0]["loss"] > 1


@pytest.mark.parametrize("precision, autocast_dtype", [("no", None), ("bf16", torch.bfloat16)])
def test_validation_runs_in_the_precision_the_stage_trains_in(precision, autocast_dtype):
    """Under train.mixed_precision=bf16 the validation forward runs under the training forward's bf16 autocast
    (the best-model value is then computed in bf16, as the stage trains), in fp32 otherwise. Mutation:
    evaluate without its autocast (validation in fp32 under bf16) -> the bf16 case fails."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer")).train()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(
        torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else None))
    cfg = replace(_stage(5, 0), train=replace(_stage(5, 0).train, mixed_precision=precision))
    evaluate(model, make_val_loader(Windows(), cfg, 0, 1), make_accelerator("no"), cfg, 5)
    assert seen == [autocast_dtype] * 2  # 10 windows, 2 batches of 5
