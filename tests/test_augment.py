"""Token augmentation: each transform's invariant, determinism, and nothing leaving the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
from midi_factory import random_score

from aurl import codec, grammar, vocab
from aurl.config import build_config
from aurl.console import UserError
from aurl.data.augment import INSTRUMENT_GROUPS, AugmentConfig, augment_tokens, sample_rng
from aurl.data.midi_io import Note, Score

OFF = dict(transpose_prob=0.0, stretch_prob=0.0, velocity_prob=0.0, instrument_prob=0.0, swing_prob=0.0,
           humanize_prob=0.0)


def only(**kw) -> AugmentConfig:
    return AugmentConfig(enabled=True, **{**OFF, **kw})


def _events(tokens):
    """(non-shift tokens, their absolute grid positions)."""
    t = np.asarray(tokens).astype(np.int64)
    clock = np.cumsum(vocab.shift_steps(t))
    ev = vocab.shift_steps(t) == 0
    return t[ev], clock[ev]


def _pitches(tokens):
    t = np.asarray(tokens).astype(np.int64)
    on = (t >= vocab.NOTE_ON_OFFSET) & (t < vocab.NOTE_OFF_OFFSET)
    return t[on] - vocab.NOTE_ON_OFFSET + vocab.MIN_PITCH


def _window(seed: int, start: int = 37, length: int = 700) -> np.ndarray:
    tokens = codec.encode(random_score(seed, n_notes=300, n_programs=4))
    return tokens[start : start + length]


@pytest.mark.parametrize(
    "bad",
    [dict(transpose_prob=1.5), dict(stretch_min=1.2, stretch_max=1.1), dict(velocity_min=0.0),
     dict(instrument_mode="family"), dict(transpose_max=-1), dict(swing_max=1.0)],
    ids=lambda d: next(iter(d)),
)
def test_config_rejects_bad_values_naming_the_key(bad):
    with pytest.raises(UserError, match=next(iter(bad)).split("_")[0]):
        build_config({"augment": {"enabled": True, **bad}})


def test_disabled_or_zero_probability_is_identity():
    w = _window(0)
    out, params = augment_tokens(w, AugmentConfig(enabled=False, transpose_prob=1.0), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(out, w)
    assert params == {}
    out, params = augment_tokens(w, only(), sample_rng(0, 0, 0))
    np.testing.assert_array_equal(out, w)
    assert params == {}


@pytest.mark.parametrize("seed", range(6))
def test_transpose_keeps_intervals_and_timing(seed):
    w = _window(seed)
    out, params = augment_tokens(w, only(transpose_prob=1.0, transpose_max=8), sample_rng(seed, 0, 0))
    s = params.get("transpose", 0)
    assert abs(s) <= 8
    np.testing.assert_array_equal(_pitches(out), _pitches(w) + s)
    assert (np.diff(_pitches(out)) == np.diff(_pitches(w))).all()
    is_note = (w >= vocab.NOTE_ON_OFFSET) & (w < vocab.TIME_SHIFT_OFFSET)
    np.testing.assert_array_equal(out[~is_note], w[~is_note])


def test_transpose_near_the_edge_shifts_less_never_clamps():
    w = codec.encode(Score.from_notes([Note(105, 0, 1, 80), Note(60, 0, 1, 80), Note(23, 1, 2, 80)]))
    cfg = only(transpose_prob=1.0, transpose_max=8)
    seen = set()
    for i in range(200):
        out, params = augment_tokens(w, cfg, sample_rng(0, 0, i))
        s = params.get("transpose", 0)
        seen.add(s)
        assert -2 <= s <= 3  # 23 - 2 = 21 and 105 + 3 = 108: the window fits; no note is ever clamped
        np.testing.assert_array_equal(_pitches(out), _pitches(w) + s)
    assert seen == {-2, -1, 1, 2, 3}  # a drawn transposition is never 0


@pytest.mark.parametrize("factor", [0.5, 0.85, 1.15, 2.0], ids=lambda f: f"x{f}")
def test_stretch_scales_positions_on_the_absolute_grid(factor):
    w = _window(3)
    out, params = augment_tokens(w, only(stretch_prob=1.0, stretch_min=factor, stretch_max=factor),
                                 sample_rng(0, 0, 0))
    ev0, pos0 = _events(w)
    ev1, pos1 = _events(out)
    np.testing.assert_array_equal(ev1, ev0)  # same events in the same order
    assert (np.diff(pos1)[np.diff(pos0) > 0] > 0).all()  # distinct positions stay distinct
    target = np.rint(pos0 * factor)
    if factor >= 1:
        np.testing.assert_array_equal(pos1, target)  # exactly the absolute grid: no drift
    else:
        assert np.abs(pos1 - target).mean() < 1.0 and pos1[-1] >= target[-1]
    clock0, clock1 = vocab.shift_steps(w).sum(), vocab.shift_steps(out).sum()
    assert clock1 == pytest.approx(clock0 * factor, abs=len(pos0) if factor < 1 else 1)


def test_stretch_of_a_long_gap_writes_several_shifts():
    w = codec.encode(Score.from_notes([Note(60, 0, 0.5, 80), Note(62, 7.5, 8, 80)]))
    out, _ = augment_tokens(w, only(stretch_prob=1.0, stretch_min=1.5, stretch_max=1.5), sample_rng(0, 0, 0))
    dec = codec.decode(out)
    assert sorted(dec.start.tolist()) == [0.0, 11.25]
    assert (vocab.shift_steps(out) <= 512).all() and (vocab.shift_steps(out) > 0).sum() >= 3


def test_velocity_scaling_moves_bins_monotonically():
    w = _window(4)
    is_vel = (w >= vocab.VELOCITY_OFFSET) & (w < vocab.SUSTAIN_OFFSET)
    up, _ = augment_tokens(w, only(velocity_prob=1.0, velocity_min=1.3, velocity_max=1.3), sample_rng(0, 0, 0))
    down, _ = augment_tokens(w, only(velocity_prob=1.0, velocity_min=0.7, velocity_max=0.7), sample_rng(0, 0, 0))
    assert (up[is_vel] >= w[is_vel]).all() and (up[is_vel] > w[is_vel]).any()
    assert (down[is_vel] <= w[is_vel]).all() and (down[is_vel] < w[is_vel]).any()
    np.testing.assert_array_equal(up[~is_vel], w[~is_vel])


def test_instrument_substitution_within_group_or_any():
    w = _window(5)
    is_inst = w >= vocab.INSTRUMENT_OFFSET
    group_of = {f: g for g in INSTRUMENT_GROUPS for f in g}
    across = False
    for i in range(30):
        out, _ = augment_tokens(w, only(instrument_prob=1.0), sample_rng(0, 0, i))
        for a, b in zip(w[is_inst] - vocab.INSTRUMENT_OFFSET, out[is_inst] - vocab.INSTRUMENT_OFFSET, strict=True):
            assert b in group_of[int(a)]
        np.testing.assert_array_equal(out[~is_inst], w[~is_inst])
        out, _ = augment_tokens(w, only(instrument_prob=1.0, instrument_mode="any"), sample_rng(0, 0, i))
        fams = out[is_inst] - vocab.INSTRUMENT_OFFSET
        across |= any(b not in group_of[int(a)] for a, b in zip(w[is_inst] - vocab.INSTRUMENT_OFFSET, fams, strict=True))
    assert across


def test_a_drawn_transform_always_changes_the_window():
    """Drawn with probability 1 and a range around the identity, each transform still changes every window
    (so its configured probability is the share of windows it changes): transposition never draws 0, a
    velocity factor near 1 moves each bin one step, substitution never keeps a family."""
    cases = {"transpose": only(transpose_prob=1.0, transpose_max=1),
             "velocity": only(velocity_prob=1.0, velocity_min=0.98, velocity_max=1.02),
             "instrument": only(instrument_prob=1.0),
             "instrument any": only(instrument_prob=1.0, instrument_mode="any")}
    compared = 0
    for name, cfg in cases.items():
        for i in range(40):
            rng = np.random.default_rng(i)  # pitches well inside the keyboard: transposition is never cut to 0
            w = codec.encode(Score.from_notes([Note(int(p), t / 4, t / 4 + 0.5, int(v), int(g)) for t, (p, v, g) in
                                               enumerate(zip(rng.integers(40, 90, 30), rng.integers(1, 128, 30),
                                                             rng.integers(0, 128, 30), strict=True))]))
            out, _ = augment_tokens(w, cfg, sample_rng(0, 0, i))
            assert not np.array_equal(out, w), (name, i)
            if name.startswith("instrument"):
                is_inst = w >= vocab.INSTRUMENT_OFFSET
                assert (out[is_inst] != w[is_inst]).all()
            compared += 1
    assert compared == 160


def test_swing_delays_off_beats_only():
    # events every 8 steps; beat 32: positions 0, 32, 64 stay, 16, 48 move later (at swing 0.5 by 8)
    notes = [Note(60 + i, i * 8 / 64, i * 8 / 64 + 4 / 64, 80) for i in range(9)]
    w = codec.encode(Score.from_notes(notes))
    cfg = only(swing_prob=1.0, swing_max=0.5, swing_beat_steps=32)
    out, params = next(r for i in range(100) if (r := augment_tokens(w, cfg, sample_rng(1, 0, i)))[1]["swing"] > 0.2)
    sw = params["swing"]
    ons = codec.decode(out)
    start = dict(zip(ons.pitch.tolist(), np.rint(ons.start * 64).astype(int).tolist(), strict=True))
    for i in range(9):
        pos = i * 8
        phase = pos % 32
        expect = pos - phase + (phase * (1 + sw) if phase < 16 else 16 * (1 + sw) + (phase - 16) * (1 - sw))
        assert start[60 + i] == round(expect)
    assert start[62] > 16  # the off-beat moved later


def test_humanize_moves_each_position_at_most_h():
    """Each grid position moves by at most h, earlier or later, the full +-h reached (120 positions 3 to 4 steps
    apart). Mutation: the moves drawn from [-h, h) (never +h) -> fails."""
    notes = [Note(60 + i % 20, i * 0.1, i * 0.1 + 0.05, 80) for i in range(60)]
    w = codec.encode(Score.from_notes(notes))
    out, _ = augment_tokens(w, only(humanize_prob=1.0, humanize_steps=2), sample_rng(2, 0, 0))
    _, p0 = _events(w)
    _, p1 = _events(out)
    assert len(p0) == len(p1) > 100
    assert (p1 - p0).min() == -2 and (p1 - p0).max() == 2


def test_a_window_ending_in_a_gap_keeps_its_stretched_end():
    """Trailing TIME_SHIFTs (a window cut inside a gap) are stretched like any gap, not dropped: the window's
    clock ends at factor x its length. Mutation: the trailing pseudo-event left out -> fails."""
    on, off, shift = vocab.note_on_id(60), vocab.note_off_id(60), vocab.time_shift_id
    w = np.array([on, shift(32), off, shift(20)], dtype=np.int16)
    out, _ = augment_tokens(w, only(stretch_prob=1.0, stretch_min=1.5, stretch_max=1.5), sample_rng(0, 0, 0))
    ev, pos = _events(out)
    assert ev.tolist() == [on, off] and pos.tolist() == [0, 48] and int(vocab.shift_steps(out).sum()) == 78


@pytest.mark.parametrize("seed", range(4))
def test_the_lead_tokens_stay_out_of_the_time_warps(seed):
    """The first `lead` tokens (the loader's state prefix) stay first and unchanged under stretch, swing and
    humanize; the rest is warped as it would be alone. Mutation: `lead` ignored by _warp_window -> fails (the
    prefix's position 0 moves: a TIME_SHIFT lands before it)."""
    toks = codec.encode(random_score(seed, n_notes=400, n_programs=6, drums=True, pitches=(50, 70)))
    prefix = grammar.state_prefix(grammar.state_at(toks, 200))
    w = np.concatenate([prefix, toks[200:700]])
    cfg = only(stretch_prob=1.0, swing_prob=1.0, swing_max=0.5, humanize_prob=1.0, humanize_steps=2)
    out, params = augment_tokens(w, cfg, sample_rng(seed, 0, 0), start_clock=lambda: 16, lead=len(prefix))
    alone, _ = augment_tokens(w[len(prefix):], cfg, sample_rng(seed, 0, 0), start_clock=lambda: 16)
    assert len(prefix) > 5 and {"stretch", "swing", "humanize"} <= set(params)
    np.testing.assert_array_equal(out[: len(prefix)], prefix)
    np.testing.assert_array_equal(out[len(prefix):], alone)


@pytest.mark.parametrize("seed", range(8))
def test_everything_at_once_stays_in_vocab_keeps_grammar_and_is_deterministic(seed):
    w = _window(seed, start=11 * seed, length=900)
    cfg = AugmentConfig(enabled=True, transpose_prob=0.8, transpose_max=8, stretch_prob=0.8, stretch_min=0.7,
                        stretch_max=1.4, velocity_prob=0.8, instrument_prob=0.8, instrument_mode="any",
                        swing_prob=0.5, humanize_prob=0.5, humanize_steps=2)
    out, params = augment_tokens(w, cfg, sample_rng(seed, 3, 17))
    again, params2 = augment_tokens(w, cfg, sample_rng(seed, 3, 17))
    np.testing.assert_array_equal(out, again)
    assert params == params2 and params
    assert out.dtype == np.int16 and out.min() >= 0 and out.max() < vocab.VOCAB_SIZE
    assert grammar.grammar_errors(out) == grammar.grammar_errors(w)
    assert abs(len(out) - len(w)) <= 0.1 * len(w)
    other, _ = augment_tokens(w, cfg, sample_rng(seed, 4, 17))
    assert not np.array_equal(other, out)


def test_swing_phase_follows_the_piece_start_clock():
    notes = [Note(60 + i, i * 8 / 64, i * 8 / 64 + 4 / 64, 80) for i in range(9)]
    w = codec.encode(Score.from_notes(notes))
    cfg = only(swing_prob=1.0, swing_max=0.5, swing_beat_steps=32)
    rng_args = (1, 0, 3)
    a, _ = augment_tokens(w, cfg, sample_rng(*rng_args), start_clock=lambda: 0)
    b, _ = augment_tokens(w, cfg, sample_rng(*rng_args))
    c, _ = augment_tokens(w, cfg, sample_rng(*rng_args), start_clock=lambda: 16)  # window starts off-beat
    d, _ = augment_tokens(w, cfg, sample_rng(*rng_args), start_clock=lambda: 32)  # a whole beat later
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, d)
    assert not np.array_equal(a, c)


def _band_window(seed: int, start: int = 200, length: int = 700) -> np.ndarray:
    """A loader-style window (state prefix + tokens) of a piece with drums and the same pitches on several
    instruments at once (a narrow pitch range, six programs)."""
    from aurl import grammar

    toks = codec.encode(random_score(seed, n_notes=400, n_programs=6, drums=True, pitches=(50, 70)))
    prefix = grammar.state_prefix(grammar.state_at(toks, start))
    return np.concatenate([prefix, toks[start : start + length]])


def _notes(tokens, drums: bool) -> list[tuple]:
    sc = codec.decode(tokens)
    keep = sc.is_drum == drums
    return sorted(zip(sc.pitch[keep].tolist(), sc.start[keep].tolist(), sc.end[keep].tolist(),
                      sc.program[keep].tolist(), strict=True))


@pytest.mark.parametrize("seed", range(4))
def test_transpose_never_moves_drums(seed):
    w = _band_window(seed)
    out, params = augment_tokens(w, only(transpose_prob=1.0, transpose_max=5), sample_rng(seed, 0, 0))
    s = params["transpose"]
    drums, pitched = _notes(w, True), _notes(w, False)
    assert len(drums) > 10 and len(pitched) > 50
    assert _notes(out, True) == drums  # the kit's keys name drums: untouched
    assert _notes(out, False) == sorted((p + s, a, b, pr) for p, a, b, pr in pitched)
    errors = grammar.grammar_errors(w)  # a window cut short leaves notes open, nothing else
    assert grammar.grammar_errors(out) == errors and errors["note_off_without_on"] == errors["duplicate_note_on"] == 0


@pytest.mark.parametrize("mode", ["group", "any"])
def test_instrument_substitution_is_a_permutation_that_keeps_drums_and_pitched_apart(mode):
    """Notes are scoped by (instrument, pitch): two families mapped onto one would collide on the pitches they
    double. The substitution permutes the families (no fixed point) and never touches the drum kit."""
    from aurl.data.augment import _substitution

    compared = 0
    for i in range(12):
        w = _band_window(i % 3, start=150 + 10 * i)
        out, params = augment_tokens(w, only(instrument_prob=1.0, instrument_mode=mode), sample_rng(0, 0, i))
        lut = params["instrument"]
        assert sorted(lut) == list(range(16)) and all(lut[f] != f for f in range(16))
        errors = grammar.grammar_errors(out)  # doubled pitches still pair up (the cut end leaves notes open)
        assert errors == grammar.grammar_errors(w) and errors["note_off_without_on"] == errors["duplicate_note_on"] == 0
        assert _notes(out, True) == _notes(w, True)  # drums stay drums, unchanged
        pitched = [(p, a, b, 8 * lut[pr // 8]) for p, a, b, pr in _notes(w, False)]
        assert _notes(out, False) == sorted(pitched)  # pitched parts stay pitched, moved family by family
        compared += len(pitched)
    assert compared > 1000
    assert (_substitution(np.linspace(0, 1, 16), "group") != np.arange(16)).all()
