"""WindowDataset and EpochBatchSampler: windows, padding and mask, purity, sharding, O(1) resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from midi_factory import write_simple_midi

from aurl import vocab
from aurl.console import UserError
from aurl.data.augment import AugmentConfig
from aurl.data.cache import TokenCache, build
from aurl.data.dataset import EpochBatchSampler, WindowDataset

SEQ = 64


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> TokenCache:
    root = tmp_path_factory.mktemp("ds")
    for i in range(8):  # from shorter than one window to several windows long
        write_simple_midi(root / "midi" / f"p{i}.mid", seed=i, n_notes=[5, 20, 40, 80, 120, 160, 30, 60][i])
    build(root / "midi", root / "cache", val_fraction=0.25, split_seed=0, workers=0, progress=False)
    return TokenCache.open(root / "cache")


def test_length_counts_windows_per_piece(cache):
    ds = WindowDataset(cache, "train", seq_len=SEQ)
    lengths = [p["length"] for p in cache.train_pieces]
    assert len(ds) == sum(max(1, -(-n // SEQ)) for n in lengths)
    assert min(lengths) < SEQ < max(lengths)  # the fixture covers padded and multi-window pieces


def test_items_are_padded_with_a_loss_mask_and_match_the_cache(cache):
    ds = WindowDataset(cache, "train", seq_len=SEQ)
    saw_pad = False
    for i in range(len(ds)):
        item = ds[(0, i)]
        ids, mask = item["input_ids"], item["loss_mask"]
        assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (SEQ,)
        assert torch.equal(mask, ids != vocab.PAD_ID)
        assert mask[0] and (mask.int().diff() <= 0).all()  # real tokens first, then PAD
        saw_pad |= not mask.all()
        piece, start = ds.locate(0, i)
        ref = cache.tokens(cache.train_pieces[piece])[start : start + SEQ]
        np.testing.assert_array_equal(ids[mask].numpy(), ref)
    assert saw_pad


def test_train_windows_start_anywhere_and_are_a_pure_function_of_seed_epoch_index(cache):
    a = WindowDataset(cache, "train", seq_len=SEQ, seed=5)
    b = WindowDataset(cache, "train", seq_len=SEQ, seed=5)
    keys = [(e, i) for e in range(3) for i in range(len(a))]
    for k in reversed(keys):  # another order, another instance: the same samples
        assert torch.equal(a[k]["input_ids"], b[k]["input_ids"])
    longest = int(np.argmax([p["length"] for p in cache.train_pieces]))
    idx = [i for i in range(len(a)) if a.locate(0, i)[0] == longest]
    starts = {a.locate(e, i)[1] for e in range(5) for i in idx}
    assert len(starts) > 3 and max(starts) > 0
    assert any(not torch.equal(a[(0, i)]["input_ids"], a[(1, i)]["input_ids"]) for i in idx)
    c = WindowDataset(cache, "train", seq_len=SEQ, seed=6)
    assert any(a.locate(0, i) != c.locate(0, i) for i in idx)


def test_val_windows_are_fixed_strided_and_the_same_every_epoch(cache):
    ds = WindowDataset(cache, "val", seq_len=SEQ)
    for i in range(len(ds)):
        assert ds.locate(0, i) == ds.locate(7, i)
        assert torch.equal(ds[(0, i)]["input_ids"], ds[(7, i)]["input_ids"])
    covered = {}
    for i in range(len(ds)):
        piece, start = ds.locate(0, i)
        covered.setdefault(piece, []).append(start)
    for piece, starts in covered.items():
        n = cache.val_pieces[piece]["length"]
        assert starts[0] == 0 and (n <= SEQ or max(starts) == n - SEQ)


def test_augmented_items_stay_in_vocab_and_are_deterministic(cache):
    aug = AugmentConfig(enabled=True, transpose_prob=1.0, stretch_prob=1.0, velocity_prob=1.0,
                        instrument_prob=1.0, swing_prob=0.5, humanize_prob=0.5)
    ds = WindowDataset(cache, "train", seq_len=SEQ, augment=aug, seed=1)
    plain = WindowDataset(cache, "train", seq_len=SEQ, seed=1)
    differ = 0
    for i in range(len(ds)):
        x, y = ds[(2, i)], ds[(2, i)]
        assert torch.equal(x["input_ids"], y["input_ids"])
        assert x["input_ids"].max() < vocab.VOCAB_SIZE and torch.equal(x["loss_mask"], x["input_ids"] != 0)
        differ += not torch.equal(x["input_ids"], plain[(2, i)]["input_ids"])
    assert differ > len(ds) // 2
    report = ds.variant_report(epochs=2)
    assert report["augmented_fraction"] > 0.5
    assert report["distinct_variants_per_piece"] > report["distinct_without_augmentation"]
    assert plain.variant_report(epochs=2)["augmented_fraction"] == 0.0


def test_bad_arguments_are_user_errors(cache, tmp_path):
    with pytest.raises(UserError, match="seq_len"):
        WindowDataset(cache, "train", seq_len=4096)
    with pytest.raises(ValueError, match="split"):
        WindowDataset(cache, "test", seq_len=SEQ)
    with pytest.raises(UserError, match="no full batch"):
        EpochBatchSampler(num_samples=5, batch_size=4, world_size=2)


def _batches(sampler, epoch, start=0):
    sampler.set_epoch(epoch)
    sampler.set_start_batch(start)
    return list(iter(sampler))


@pytest.mark.parametrize("world_size,drop_last", [(1, True), (2, True), (3, False)], ids=["ws1", "ws2", "ws3-nodrop"])
def test_sampler_is_deterministic_sharded_and_resumable(world_size, drop_last):
    n, bs = 103, 4
    samplers = [EpochBatchSampler(n, bs, seed=9, rank=r, world_size=world_size, drop_last=drop_last)
                for r in range(world_size)]
    per_rank = [_batches(s, 1) for s in samplers]
    assert all(len(b) == len(s) for b, s in zip(per_rank, samplers, strict=True))
    assert len({len(b) for b in per_rank}) == 1  # every rank steps the same number of times
    assert all(k[0] == 1 for b in per_rank for batch in b for k in batch)
    flat = [k[1] for b in per_rank for batch in b for k in batch]
    if drop_last:
        assert len(flat) == len(set(flat)) == len(samplers[0]) * bs * world_size  # ranks never share a sample
        assert all(len(batch) == bs for b in per_rank for batch in b)
    else:
        assert set(flat) == set(range(n))  # nothing dropped
    # pure function of (seed, epoch): a new sampler gives the same batches; another epoch another order
    again = EpochBatchSampler(n, bs, seed=9, rank=0, world_size=world_size, drop_last=drop_last)
    assert _batches(again, 1) == per_rank[0]
    assert _batches(again, 2) != per_rank[0]
    # O(1) resume at batch k of this epoch only
    k = 3
    assert _batches(again, 1, start=k) == per_rank[0][k:]
    again.set_epoch(1)
    assert list(again) == per_rank[0]  # set_epoch resets the start batch


def test_sampler_without_shuffle_is_in_order():
    s = EpochBatchSampler(10, 3, shuffle=False)
    s.set_epoch(4)
    assert [[i for _, i in b] for b in s] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_dataloader_with_workers_reproduces_the_same_batches(cache):
    ds = WindowDataset(cache, "train", seq_len=SEQ, augment=AugmentConfig(enabled=True), seed=3)
    sampler = EpochBatchSampler(len(ds), batch_size=2, seed=3)

    def run(workers, start=0):
        sampler.set_epoch(1)
        sampler.set_start_batch(start)
        loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, num_workers=workers)
        return [b["input_ids"] for b in loader]

    ref = run(0)
    got = run(1)
    assert len(ref) == len(got) == len(sampler)
    assert all(torch.equal(a, b) for a, b in zip(ref, got, strict=True))
    resumed = run(0, start=2)
    assert all(torch.equal(a, b) for a, b in zip(ref[2:], resumed, strict=True))
