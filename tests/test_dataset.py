"""WindowDataset and EpochBatchSampler: windows, padding and mask, purity, sharding, O(1) resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from midi_factory import make_pretty_midi, write_simple_midi

from aurl import grammar, vocab
from aurl.console import UserError
from aurl.data.augment import AugmentConfig
from aurl.data.cache import build
from aurl.data.dataset import EpochBatchSampler, WindowDataset
from aurl.data.token_cache import TokenCache

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


def _mask_of(ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """The loss mask a window must have: its own tokens, not the state prefix, not PAD."""
    return (ids != vocab.PAD_ID) & (torch.arange(len(ids)) >= prefix)


def test_items_are_padded_with_a_loss_mask_and_match_the_cache(cache):
    ds = WindowDataset(cache, "train", seq_len=SEQ)
    saw_pad = saw_prefix = False
    for i in range(len(ds)):
        item = ds[(0, i)]
        ids, mask = item["input_ids"], item["loss_mask"]
        assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (SEQ,)
        piece, start = ds.locate(0, i)
        _, params = ds.window(0, i)
        k = params["prefix"]
        assert params["start"] == start and torch.equal(mask, _mask_of(ids, k))
        assert mask[k] and (mask[k:].int().diff() <= 0).all()  # the window's own tokens first, then PAD
        saw_pad |= not mask[k:].all()
        saw_prefix |= k > 0
        toks = cache.tokens(cache.train_pieces[piece])
        assert (start == 0) == (k == 0)  # the opening needs no prefix; any other start has one
        np.testing.assert_array_equal(ids[:k].numpy(), grammar.state_prefix(grammar.state_at(toks, start)))
        np.testing.assert_array_equal(ids[mask].numpy(), toks[start : start + SEQ - k])
    assert saw_pad and saw_prefix


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


def test_val_windows_tile_each_piece_once_and_are_the_same_every_epoch(cache):
    """Back to back: the windows' own tokens put together are the piece, each token exactly once."""
    ds = WindowDataset(cache, "val", seq_len=SEQ)
    own: dict[int, list] = {}
    for i in range(len(ds)):
        assert ds.locate(0, i) == ds.locate(7, i)
        a, b = ds[(0, i)], ds[(7, i)]
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["loss_mask"], b["loss_mask"])
        piece, start = ds.locate(0, i)
        k = ds.window(0, i)[1]["prefix"]
        own.setdefault(piece, []).append(a["input_ids"][k:][a["loss_mask"][k:]].numpy())
    assert sorted(own) == list(range(len(cache.val_pieces)))
    for piece, parts in own.items():
        np.testing.assert_array_equal(np.concatenate(parts), cache.tokens(cache.val_pieces[piece]))
    assert any(len(parts) > 1 for parts in own.values())  # some piece spans several windows


def test_no_orphan_note_off_at_any_window_start_over_the_whole_cache(cache):
    """Every window of every split, and a window at every start position of every piece, is grammatical."""
    checked = 0
    for split in ("train", "val"):
        ds = WindowDataset(cache, split, seq_len=SEQ, seed=2)
        for e in range(4 if split == "train" else 1):
            for i in range(len(ds)):
                errors = grammar.grammar_errors(ds.window(e, i)[0])
                assert errors["note_off_without_on"] == errors["duplicate_note_on"] == 0, (split, e, i)
                assert errors["special_inside"] == 0
                checked += 1
    for piece in cache.pieces:
        toks = np.asarray(cache.tokens(piece))
        for s in range(2, len(toks)):
            window = np.concatenate([grammar.state_prefix(grammar.state_at(toks, s)), toks[s : s + SEQ]])
            assert grammar.grammar_errors(window)["note_off_without_on"] == 0, (piece["path"], s)
            checked += 1
    assert checked > 1000


def test_start_share_is_honoured_and_the_ends_of_pieces_are_reached(cache):
    """start_share of the windows begin at START on top of the share uniform coverage gives; END is reached."""
    def shares(start_share):
        ds = WindowDataset(cache, "train", seq_len=SEQ, seed=0, start_share=start_share)
        long_idx = [i for i in range(len(ds)) if ds._length[ds.locate(0, i)[0]] > 2 * SEQ]
        keys = [(e, i) for e in range(60) for i in long_idx]
        at_start = np.mean([ds.locate(*k)[1] == 0 for k in keys])
        with_end = np.mean([ds.window(*k)[0][-1] == vocab.END_ID for k in keys])
        return at_start, with_end, len(keys)

    s0, e0, n = shares(0.0)
    s5, e5, _ = shares(0.5)
    s1, e1, _ = shares(1.0)
    assert n > 500
    # binomial standard error at n samples; 4 sigma
    tol = 4 * np.sqrt(0.25 / n)
    assert s1 == 1.0 and e1 == 0.0
    assert 0.02 < s0 < 0.5 and 0.02 < e0 < 0.5  # coverage alone reaches both ends of long pieces
    assert abs(s5 - (0.5 + 0.5 * s0)) < tol, (s5, s0, tol)
    assert abs(e5 - 0.5 * e0) < tol, (e5, e0, tol)
    with pytest.raises(UserError, match="start_share"):
        WindowDataset(cache, "train", seq_len=SEQ, start_share=1.5)


def test_augmented_items_stay_in_vocab_and_are_deterministic(cache):
    aug = AugmentConfig(enabled=True, transpose_prob=1.0, stretch_prob=1.0, velocity_prob=1.0,
                        instrument_prob=1.0, swing_prob=0.5, humanize_prob=0.5)
    ds = WindowDataset(cache, "train", seq_len=SEQ, augment=aug, seed=1)
    plain = WindowDataset(cache, "train", seq_len=SEQ, seed=1)
    differ = 0
    for i in range(len(ds)):
        x, y = ds[(2, i)], ds[(2, i)]
        assert torch.equal(x["input_ids"], y["input_ids"])
        assert x["input_ids"].max() < vocab.VOCAB_SIZE
        assert torch.equal(x["loss_mask"], _mask_of(x["input_ids"], ds.window(2, i)[1]["prefix"]))
        differ += not torch.equal(x["input_ids"], plain[(2, i)]["input_ids"])
    assert differ > len(ds) // 2
    report = ds.variant_report(epochs=2)
    assert report["augmented_fraction"] > 0.5
    assert report["distinct_variants_per_piece"] > report["distinct_without_augmentation"]
    assert plain.variant_report(epochs=2)["augmented_fraction"] == 0.0


def test_augmentation_draws_depend_on_epoch_and_index(cache):
    """Each sample's augmentation comes from its own (seed, epoch, index): one index gets other draws in other
    epochs, one epoch other draws at other indices, and the same key the same draws. Mutations: the draws
    seeded without the epoch -> fails; without the index -> fails."""
    aug = AugmentConfig(enabled=True, transpose_prob=1.0, transpose_max=6, stretch_prob=0.0, velocity_prob=1.0,
                        instrument_prob=0.0, swing_prob=0.0, humanize_prob=0.0)
    ds = WindowDataset(cache, "train", seq_len=SEQ, augment=aug, seed=4)

    def draws(e, i):
        params = ds.window(e, i)[1]
        return params.get("transpose"), params.get("velocity")

    across_epochs = [{draws(e, i) for e in range(6)} for i in range(len(ds))]
    across_index = [{draws(e, i) for i in range(len(ds))} for e in range(6)]
    assert all(len(d) > 1 for d in across_epochs) and all(len(d) > 1 for d in across_index)
    assert [draws(3, i) for i in range(len(ds))] == [draws(3, i) for i in range(len(ds))]


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


@pytest.fixture(scope="module")
def chorale_cache(tmp_path_factory) -> TokenCache:
    """Like the Bach chorales: one instrument and one velocity per piece, so INSTRUMENT and VELOCITY are written
    once, at the first note: only a window's state prefix brings them to windows inside the piece."""
    root = tmp_path_factory.mktemp("chorales")
    rng = np.random.default_rng(0)
    for i in range(6):
        t, notes = 0.0, []
        for _ in range(150):
            t += float(rng.choice([0.0, 0.25, 0.5]))
            notes.append((int(rng.integers(45, 80)), t, t + float(rng.choice([0.25, 0.5, 1.0])), 80))
        path = root / "midi" / f"c{i}.mid"
        path.parent.mkdir(parents=True, exist_ok=True)
        make_pretty_midi(notes, program=19).write(str(path))
    build(root / "midi", root / "cache", val_fraction=0.2, split_seed=0, workers=0, progress=False)
    return TokenCache.open(root / "cache")


def test_each_transform_changes_the_share_of_windows_it_is_configured_for(chorale_cache):
    """variant_report's per-transform coverage matches each configured probability (python -m aurl.data info
    --variety prints it). Tolerance: 4 binomial standard errors at the number of windows compared."""
    aug = AugmentConfig(enabled=True, transpose_prob=0.5, stretch_prob=0.5, velocity_prob=0.5, instrument_prob=0.3,
                        swing_prob=0.2, swing_max=0.5, humanize_prob=0.2)
    ds = WindowDataset(chorale_cache, "train", seq_len=32, augment=aug, seed=0, start_share=0.1)
    epochs = -(-1500 // len(ds))
    report = ds.variant_report(epochs=epochs)
    n = epochs * len(ds)
    assert n >= 1500 and set(report["coverage"]) == {"transpose", "stretch", "velocity", "instrument", "swing",
                                                     "humanize"}
    for name, c in report["coverage"].items():
        p = c["configured"]
        tol = 4 * np.sqrt(p * (1 - p) / n)
        assert abs(c["changed"] - p) <= tol, (name, c, round(tol, 3))
    assert 0.1 < report["start_share"] < 0.5 and 0.02 < report["end_share"] < 0.5



def test_swing_is_in_phase_with_the_piece_and_leaves_the_prefix_first(chorale_cache):
    """The loader swings each window in phase with the piece's beats (start_clock: the clock at the window's
    start) and keeps its state prefix out of the warp (lead): on every window, the events on a beat of the
    piece (every 32 steps; the chorales' events lie every 16) keep their place, those half a beat off move
    later, and the prefix stays first, unchanged. Windows starting half a beat off are among them.
    Mutations: window() passing start_clock=lambda: 0 -> fails; passing lead=0 -> fails."""
    swing = AugmentConfig(enabled=True, transpose_prob=0.0, stretch_prob=0.0, velocity_prob=0.0, instrument_prob=0.0,
                          swing_prob=1.0, swing_max=0.5, swing_beat_steps=32, humanize_prob=0.0)
    ds = WindowDataset(chorale_cache, "train", seq_len=32, augment=swing, seed=0)
    plain = WindowDataset(chorale_cache, "train", seq_len=32, seed=0)
    on_beat = off_beat = off_phase_windows = 0
    for e in range(3):
        for i in range(len(ds)):
            (toks, params), base = ds.window(e, i), plain.window(e, i)[0]
            piece, start = ds.locate(e, i)
            k = params["prefix"]
            np.testing.assert_array_equal(toks[:k], base[:k])
            clock = int(vocab.shift_steps(chorale_cache.tokens(chorale_cache.train_pieces[piece])[:start]).sum())
            assert clock % 16 == 0
            off_phase_windows += clock % 32 == 16
            ev0, pos0 = _events_after(base, k)
            ev1, pos1 = _events_after(toks, k)
            n = min(len(ev0), len(ev1))
            assert n > 5 and (ev0[:n] == ev1[:n]).all()
            beat = (clock + pos0[:n]) % 32 == 0
            assert (pos1[:n][beat] == pos0[:n][beat]).all(), (e, i, clock)
            on_beat += int(beat.sum())
            if params["swing"] >= 0.04:  # at least one step later: round(16 x swing) >= 1
                assert (pos1[:n][~beat] > pos0[:n][~beat]).all(), (e, i, clock)
                off_beat += int((~beat).sum())
    assert on_beat > 500 and off_beat > 500 and off_phase_windows > 20


def _events_after(tokens, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(the non-shift tokens after the first k, their grid positions in the window)."""
    t = np.asarray(tokens).astype(np.int64)
    clock = np.cumsum(vocab.shift_steps(t))
    ev = (vocab.shift_steps(t) == 0) & (np.arange(len(t)) >= k)
    return t[ev], clock[ev]


def test_a_time_warp_that_shortens_the_tokens_still_fills_the_window():
    """Stretch 0.5 writes each 608-step gap (two shifts) as one: the window reads extra raw tokens
    (WARP_MARGIN) so that a window inside the piece is still seq_len tokens long, with no PAD.
    Mutation: WARP_MARGIN 0 -> fails (windows of ~26 tokens)."""
    from test_val_tiling import MemoryCache

    from aurl import codec
    from aurl.data.midi_io import Note, Score

    toks = codec.encode(Score.from_notes([Note(60 + i % 12, 10.0 * i, 10.0 * i + 0.5, 80) for i in range(100)]))
    half = AugmentConfig(enabled=True, transpose_prob=0.0, stretch_prob=1.0, stretch_min=0.5, stretch_max=0.5,
                         velocity_prob=0.0, instrument_prob=0.0, swing_prob=0.0, humanize_prob=0.0)
    ds = WindowDataset(MemoryCache([toks.astype(np.int16)]), "train", seq_len=32, augment=half, seed=0)
    inside = 0
    for e in range(4):
        for i in range(len(ds)):
            _, start = ds.locate(e, i)
            if start + 3 * 32 < len(toks):
                assert len(ds.window(e, i)[0]) == 32, (e, i, start)
                inside += 1
    assert inside > 20


def test_no_training_window_starts_just_after_start(cache):
    """A draw that lands on token 1 starts at START itself (token 1 has no state to restate: the window would
    be the opening without its START). Over 300 epochs such draws occur. Mutation: `x <= 0` for `x <= 1`
    -> fails."""
    ds = WindowDataset(cache, "train", seq_len=SEQ, seed=0)
    starts = [ds.locate(e, i)[1] for e in range(300) for i in range(len(ds))]
    assert 1 not in starts and starts.count(0) > 300 and len(set(starts)) > 100


def _steps(n, micro, accum, world, epoch, start_sample=0, seed=5) -> list[list[tuple]]:
    """Each optimizer step (accum batches on each of `world` ranks) from a cursor: its micro-batches, as
    sorted tuples of sample indices, in a sorted list (which rank drew which does not change the step)."""
    per_rank = []
    for r in range(world):
        s = EpochBatchSampler(n, micro, seed=seed, rank=r, world_size=world)
        s.set_epoch(epoch)
        s.set_start_sample(start_sample)
        per_rank.append([tuple(sorted(i for e, i in b if e == epoch)) for b in s])
    return [sorted(b for r in range(world) for b in per_rank[r][k * accum:(k + 1) * accum])
            for k in range(len(per_rank[0]) // accum)]


@pytest.mark.parametrize("before, after", [((2, 1, 3), (1, 1, 6)), ((1, 1, 6), (2, 1, 3)), ((2, 1, 3), (3, 1, 2)),
                                           ((2, 2, 2), (1, 2, 4)), ((1, 4, 2), (2, 2, 2))],
                         ids=["2to1", "1to2", "2to3", "2to1-micro2", "1to2-micro4to2"])
def test_global_sample_order_survives_a_change_of_world_size(before, after):
    """The cursor is a global sample index: a run on N processes (world, micro-batch, accumulation) stopped
    after k steps and resumed on M with the global batch kept draws, step by step, the very samples of the
    uninterrupted run, each sample of the epoch once; with the micro-batch unchanged, the very micro-batches."""
    n, k = 103, 3  # samples in the epoch; steps done before the stop
    (w0, m0, a0), (w1, m1, a1) = before, after
    g = w0 * m0 * a0
    assert g == w1 * m1 * a1
    ref = _steps(n, m0, a0, w0, epoch=2)
    resumed = _steps(n, m1, a1, w1, epoch=2, start_sample=k * g)
    assert len(ref) == k + len(resumed) == n // g
    samples = lambda steps: [sorted(i for micro in step for i in micro) for step in steps]  # noqa: E731
    assert samples(ref[k:]) == samples(resumed)  # step by step, the same global samples
    seen = [i for step in samples(ref[:k]) + samples(resumed) for i in step]
    assert len(seen) == len(set(seen)) == (n // g) * g  # each at most once, none skipped: every full step's
    if m0 == m1:
        assert ref[k:] == resumed  # the same micro-batches (what makes the step's gradient the same)
    if m1 * w1 > 1:  # a cursor inside a round of micro-batches is no step boundary
        with pytest.raises(ValueError, match="not a multiple"):
            EpochBatchSampler(n, m1, rank=0, world_size=w1).set_start_sample(k * g + 1)
