"""aurl.codec: Score <-> tokens. Round trips (encode, decode, encode is identical; every onset within half a
step, no drift), what encoding drops and counts (out of range, drums, overlaps), and decode's rules for any
token stream, malformed included. (Whole multi-track MIDI files through the codec: test_fidelity.py.)"""

from __future__ import annotations

import numpy as np
import pytest
from midi_factory import random_score

from aurl import codec, grammar, vocab
from aurl.data.midi_io import Note, Score


def _cases():
    step = vocab.STEP_SECONDS
    return {
        "single_note": Score.from_notes([Note(60, 0.0, 0.5, 100)]),
        "chord": Score.from_notes([Note(p, 1.0, 2.0, 64) for p in (60, 64, 67, 72)]),
        "long_gap_20s": Score.from_notes([Note(60, 0.0, 0.5, 90), Note(62, 20.5, 21.0, 90)]),
        "exactly_8s_gap": Score.from_notes([Note(60, 0.0, 1.0, 90), Note(62, 9.0, 9.5, 90)]),
        "tiny_note": Score.from_notes([Note(60, 0.3, 0.3 + step / 10, 90)]),
        "same_pitch_overlap": Score.from_notes([Note(60, 0.0, 2.0, 90), Note(60, 1.0, 3.0, 70)]),
        "edges_of_range": Score.from_notes([Note(21, 0, 1, 1), Note(108, 0, 1, 127)]),
        "instruments": Score.from_notes([Note(60, 0, 1, 80, 0), Note(48, 0, 1, 80, 33), Note(72, 0.5, 1, 80, 73)]),
        "doubling_across_instruments": Score.from_notes([Note(60, 0, 1, 80, 0), Note(60, 0.5, 2, 70, 40),
                                                          Note(60, 1.5, 3, 60, 0)]),
        "drums_and_piano": Score.from_notes([Note(36, 0, 0.1, 100, 0, True), Note(42, 0, 0.05, 80, 0, True),
                                             Note(36, 0, 1, 80), Note(36, 0.5, 0.6, 90, 0, True)]),
        **{f"random_seed{s}": random_score(s, drums=s == 2) for s in range(4)},
    }


CASES = _cases()


@pytest.mark.parametrize("name", list(CASES))
def test_encode_decode_encode_is_identical(name):
    tokens = codec.encode(CASES[name])
    assert tokens.dtype == np.int16 and tokens[0] == vocab.START_ID and tokens[-1] == vocab.END_ID
    assert grammar.grammar_errors(tokens) == dict.fromkeys(grammar.grammar_errors([]), 0)
    again = codec.encode(codec.decode(tokens))
    np.testing.assert_array_equal(again, tokens)


@pytest.mark.parametrize("name", list(CASES))
def test_decoded_notes_within_half_a_step(name):
    score = CASES[name]
    st = codec.EncodeStats()
    dec = codec.decode(codec.encode(score, st))
    assert dec.num_notes == st.kept == st.notes_in - st.out_of_range - st.merged
    assert st.drums_kept == int(dec.is_drum.sum())
    keep = (score.pitch >= 21) & (score.pitch <= 108)
    if st.merged == 0 and st.truncated == 0:
        # every onset lies on the absolute grid within half a step: no drift, whatever the length
        orig = sorted(zip(score.pitch[keep].tolist(), score.is_drum[keep].tolist(), score.start[keep].tolist(),
                          strict=True))
        got = sorted(zip(dec.pitch.tolist(), dec.is_drum.tolist(), dec.start.tolist(), strict=True))
        assert len(got) == len(orig) > 0
        for (p0, d0, s0), (p1, d1, s1) in zip(orig, got, strict=True):
            assert (p0, d0) == (p1, d1) and abs(s0 - s1) <= vocab.STEP_SECONDS / 2 + 1e-9


def test_no_drift_over_a_long_piece():
    # 2,000 onsets every 0.1 s (not a multiple of the step): gap-by-gap flooring would drift by ~ 30 s
    notes = [Note(60 + i % 12, 0.1 * i, 0.1 * i + 0.05, 80) for i in range(2000)]
    dec = codec.decode(codec.encode(Score.from_notes(notes)))
    err = np.abs(np.sort(dec.start) - 0.1 * np.arange(2000))
    assert err.max() <= vocab.STEP_SECONDS / 2 + 1e-9


def test_long_gap_is_several_shifts_not_truncated():
    tokens = codec.encode(CASES["long_gap_20s"])
    kinds = [vocab.token_kind(t) for t in tokens]
    assert kinds.count("time_shift") >= 3
    assert codec.decode(tokens).start.max() == pytest.approx(20.5)


def test_out_of_range_dropped_and_counted_never_clamped():
    st = codec.EncodeStats()
    score = Score.from_notes([Note(20, 0, 1, 80), Note(109, 0, 1, 80), Note(60, 0, 1, 80), Note(0, 0, 1, 8)])
    dec = codec.decode(codec.encode(score, st))
    assert st.out_of_range == 3 and dec.pitch.tolist() == [60]


def test_drums_are_kept_under_the_drum_kit_and_counted():
    st = codec.EncodeStats()
    score = Score.from_notes([Note(36, 0, 1, 80, 25, True), Note(36, 0, 1, 80), Note(60, 0, 1, 80)])
    tokens = codec.encode(score, st)
    dec = codec.decode(tokens)
    assert sorted(zip(dec.pitch.tolist(), dec.is_drum.tolist(), strict=True)) == [(36, False), (36, True), (60, False)]
    assert st.drums_kept == 1 and st.kept == 3 and st.merged == st.truncated == 0
    assert dec.program[dec.is_drum].tolist() == [0]  # a kit is a kit: the drum program is not stored
    assert vocab.DRUM_KIT_ID in tokens.tolist()


def test_the_same_pitch_on_two_instruments_is_two_notes():
    """A piano doubling the strings (and the same pitch on the drum kit): nothing merged or cut; a NOTE_OFF
    ends the pitch of the instrument in force, so the piano's C4 ends at 1 s while the strings' sounds on."""
    notes = [Note(60, 0.0, 1.0, 80, 0), Note(60, 0.5, 2.0, 70, 40), Note(60, 0.75, 0.8, 90, 0, True)]
    st = codec.EncodeStats()
    tokens = codec.encode(Score.from_notes(notes), st)
    assert st.merged == st.truncated == 0 and st.kept == 3
    got = sorted((n.pitch, n.start, n.end, n.program, n.is_drum) for n in codec.decode(tokens).notes)
    grid_08 = 51 * vocab.STEP_SECONDS  # 0.8 s on the grid
    assert got == [(60, 0.0, 1.0, 0, False), (60, 0.5, 2.0, 40, False), (60, 0.75, grid_08, 0, True)]
    # three NOTE_OFFs of 60 (drum, piano, strings): the piano's, at 1 s, needs the piano back in force first
    offs = [i for i, t in enumerate(tokens.tolist()) if t == vocab.note_off_id(60)]
    assert len(offs) == 3 and tokens[offs[1] - 1] == vocab.family_token(0)


def test_same_pitch_overlap_is_deterministic_whatever_the_input_order():
    notes = [Note(60, 0.0, 2.0, 90, 0), Note(60, 1.0, 3.0, 70, 1), Note(60, 1.0, 1.5, 50, 0), Note(62, 0, 1, 9)]
    ref = codec.encode(Score.from_notes(notes))
    rng = np.random.default_rng(0)
    for _ in range(5):
        perm = rng.permutation(len(notes))
        np.testing.assert_array_equal(codec.encode(Score.from_notes([notes[i] for i in perm])), ref)
    st = codec.EncodeStats()
    dec = codec.decode(codec.encode(Score.from_notes(notes), st))
    assert st.merged == 1 and st.truncated == 1
    sixty = sorted((s, e) for p, s, e in zip(dec.pitch, dec.start, dec.end, strict=True) if p == 60)
    assert sixty == [(0.0, 1.0), (1.0, 3.0)]  # the longer of the two 1.0 s onsets wins


@pytest.mark.parametrize("seed", range(5))
def test_decode_of_any_sequence_gives_valid_notes(seed):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab.VOCAB_SIZE, 3000)
    dec = codec.decode(tokens)
    assert dec.num_notes > 0
    assert (dec.end > dec.start).all() and (dec.start >= 0).all()
    assert ((dec.pitch >= 21) & (dec.pitch <= 108)).all()
    assert ((dec.velocity >= 1) & (dec.velocity <= 127)).all()
    assert ((dec.program >= 0) & (dec.program <= 127)).all()
    errs = grammar.grammar_errors(tokens)
    assert errs["special_inside"] > 0 and errs["note_off_without_on"] > 0
    # the decoded score re-encodes to a clean sequence
    assert sum(grammar.grammar_errors(codec.encode(dec)).values()) == 0


def test_decode_rules_for_malformed_input():
    on, off, sh = vocab.note_on_id, vocab.note_off_id, vocab.time_shift_id
    dec = codec.decode([off(60), on(60), on(60), sh(4), on(60), on(64), vocab.PAD_ID, 9999])
    notes = sorted((n.pitch, n.start, n.end) for n in dec.notes)
    step = vocab.STEP_SECONDS
    # stray off ignored; duplicate onset at one step ignored; re-onset closes; open notes closed >= 1 step
    assert notes == [(60, 0.0, 4 * step), (60, 4 * step, 5 * step), (64, 4 * step, 5 * step)]
    # the scope is (instrument, pitch): the strings' NOTE_OFF leaves the piano's note sounding
    inst = vocab.family_token
    dec = codec.decode([on(60), inst(5), on(60), sh(2), off(60), sh(2), inst(0), off(60)])
    assert sorted((n.program, n.start, n.end) for n in dec.notes) == [(0, 0.0, 4 * step), (40, 0.0, 2 * step)]
    assert grammar.grammar_errors([vocab.START_ID, on(60), vocab.END_ID, vocab.PAD_ID])["unclosed_notes"] == 1
    assert grammar.grammar_errors([on(60), vocab.START_ID, off(60)])["special_inside"] == 1
    # framing is not an error: a leading START, a trailing END, the PADs after it (a row that ended early)
    assert sum(grammar.grammar_errors([vocab.START_ID, on(60), off(60), vocab.END_ID, vocab.PAD_ID,
                                       vocab.PAD_ID]).values()) == 0


def test_empty_score_encodes_to_framing_and_tempo():
    tokens = codec.encode(Score())
    assert [vocab.token_kind(t) for t in tokens] == ["start", "tempo", "end"]
    assert codec.decode(tokens).num_notes == 0


def test_tempo_and_pedal_changes_on_one_grid_step_keep_the_last():
    """Two tempo events (or pedal events) that round onto one grid step: the later one is the one in force
    there, as in the MIDI file. Mutations: _tempo_events keeping the first event of a step -> fails;
    _sustain_events keeping the first -> fails."""
    step = vocab.STEP_SECONDS
    score = Score.from_notes([Note(60, 0.0, 3.0, 80)], tempos=((0.0, 60.0), (step / 4, 150.0), (2.0, 90.0)),
                             sustain=((0.5, True), (1.0, False), (1.0 + step / 4, True), (2.5, False)))
    dec = codec.decode(codec.encode(score))
    assert dec.tempo_time.tolist() == [0.0, 2.0]
    np.testing.assert_array_equal(vocab.tempo_bin(dec.tempo_bpm), vocab.tempo_bin([150.0, 90.0]))
    assert dec.sustain_time.tolist() == [0.5, 2.5] and dec.sustain_on.tolist() == [True, False]


def test_instrument_and_velocity_are_written_only_where_they_change():
    """The stream of a small two-instrument piece, token by token (the module docstring's order): INSTRUMENT /
    VELOCITY only where the instrument or the velocity changes, offs before ons at one step. Mutations: a
    VELOCITY before every NOTE_ON -> fails; an INSTRUMENT before every note event -> fails."""
    on, off, shift, fam = vocab.note_on_id, vocab.note_off_id, vocab.time_shift_id, vocab.family_token
    vel = lambda v: vocab.VELOCITY_OFFSET + int(vocab.velocity_bin(v))  # noqa: E731
    score = Score.from_notes([Note(60, 0, 0.5, 80), Note(64, 0, 0.5, 80), Note(67, 0.5, 1, 80),
                              Note(72, 0.5, 1, 100, 40)])  # program 40: strings (family 5)
    want = [vocab.START_ID, vocab.TEMPO_OFFSET + int(vocab.tempo_bin(120.0)),
            fam(0), vel(80), on(60), on(64), shift(32),
            off(60), off(64), on(67), fam(5), vel(100), on(72), shift(32),
            fam(0), off(67), fam(5), off(72), vocab.END_ID]
    assert codec.encode(score).tolist() == want
