"""MIDI in/out: symusic reader vs the pretty_midi reference, writer round trips, every bad-input case."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from midi_factory import make_pretty_midi, random_score, write_simple_midi

from aurl import codec, vocab
from aurl.data.midi_io import SUSTAIN_CC, MidiReadError, Note, Score, read_midi, write_midi


def read_midi_pretty(path: str | Path) -> Score:
    """The reference reader (pretty_midi, ~400x slower than symusic): what read_midi must agree with."""
    import pretty_midi

    pm = pretty_midi.PrettyMIDI(str(path))
    notes, sustain = [], []
    for inst in pm.instruments:
        notes += [Note(n.pitch, n.start, n.end, n.velocity, inst.program, inst.is_drum) for n in inst.notes]
        if not inst.is_drum:
            sustain += [(c.time, c.value >= 64) for c in inst.control_changes if c.number == SUSTAIN_CC]
    times, bpms = pm.get_tempo_changes()
    sustain.sort(key=lambda x: x[0])
    return Score.from_notes(notes, tempos=list(zip(times, bpms, strict=True)), sustain=sustain)


def _note_set(score: Score, decimals: int = 3):
    return sorted(
        (int(p), round(float(s), decimals), round(float(e), decimals), int(v), int(pr))
        for p, s, e, v, pr in zip(score.pitch, score.start, score.end, score.velocity, score.program, strict=True)
    )


def _assert_close_notes(a: Score, b: Score, tol: float):
    assert a.num_notes == b.num_notes
    ka = np.lexsort((a.start, a.pitch, a.program))
    kb = np.lexsort((b.start, b.pitch, b.program))
    assert (a.pitch[ka] == b.pitch[kb]).all() and (a.program[ka] == b.program[kb]).all()
    assert (a.velocity[ka] == b.velocity[kb]).all()
    assert np.abs(a.start[ka] - b.start[kb]).max() <= tol
    assert np.abs(a.end[ka] - b.end[kb]).max() <= tol


def test_write_then_read_keeps_notes_programs_tempo_and_pedal(tmp_path):
    score = Score.from_notes(
        [Note(60, 0.0, 0.5, 80, 0), Note(40, 0.25, 3.0, 50, 33), Note(72, 2.0, 2.5, 100, 73)],
        tempos=[(0.0, 90.0), (1.5, 150.0)],
        sustain=[(0.1, True), (1.0, False)],
    )
    path = tmp_path / "out.mid"
    write_midi(score, path)
    back = read_midi(path)
    _assert_close_notes(score, back, tol=2e-3)  # within one tick
    np.testing.assert_allclose(back.tempo_time, [0.0, 1.5], atol=2e-3)
    np.testing.assert_allclose(back.tempo_bpm, [90.0, 150.0], rtol=1e-3)
    assert back.sustain_on.tolist()[:2] == [True, False]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_symusic_and_pretty_midi_agree(tmp_path, seed):
    # same-pitch overlaps cannot be expressed in MIDI (readers pair them differently): decode removes them
    score = codec.decode(codec.encode(random_score(seed, n_notes=120)))
    path = tmp_path / "r.mid"
    write_midi(score, path)
    a, b = read_midi(path), read_midi_pretty(path)
    # symusic reports seconds as float32: agree to well below a grid step
    _assert_close_notes(a, b, tol=1e-4)
    np.testing.assert_array_equal(codec.encode(a), codec.encode(b))


def test_token_round_trip_through_a_midi_file(tmp_path):
    tokens = codec.encode(random_score(7))
    write_midi(codec.decode(tokens), tmp_path / "t.mid")
    np.testing.assert_array_equal(codec.encode(read_midi(tmp_path / "t.mid")), tokens)


# ---- bad input: each case skipped with its own reason
def _valid_bytes(tmp_path) -> bytes:
    return write_simple_midi(tmp_path / "ok.mid").read_bytes()


def _with_division(data: bytes, division: int) -> bytes:
    return data[:12] + struct.pack(">h", division) + data[14:]


BAD = {
    "empty": (lambda ok: b"", "empty"),
    "not_midi": (lambda ok: b"this is a text file, not a MIDI file" * 3, "not a MIDI"),
    "truncated_header": (lambda ok: ok[:10], "truncated"),
    "truncated_track": (lambda ok: ok[: len(ok) // 2], "unreadable"),
    "zero_ticks_per_beat": (lambda ok: _with_division(ok, 0), "ticks per beat is 0"),
    "negative_ticks_per_beat": (lambda ok: _with_division(ok, -25), "ticks per beat is -25"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_files_raise_with_reason(tmp_path, case):
    make, reason = BAD[case]
    path = tmp_path / f"{case}.mid"
    path.write_bytes(make(_valid_bytes(tmp_path)))
    with pytest.raises(MidiReadError, match=reason):
        read_midi(path)


def test_absurd_length_and_no_notes(tmp_path):
    far = tmp_path / "far.mid"
    make_pretty_midi([(60, 0.0, 1.0, 80), (62, 5 * 3600.0, 5 * 3600.0 + 1, 80)]).write(str(far))
    with pytest.raises(MidiReadError, match="absurd length"):
        read_midi(far)
    assert read_midi(far, max_seconds=6 * 3600).num_notes == 2
    empty = tmp_path / "silent.mid"
    make_pretty_midi([]).write(str(empty))
    with pytest.raises(MidiReadError, match="no notes"):
        read_midi(empty)


def test_bundled_chorales_symusic_vs_pretty_midi_and_round_trip(tmp_path):
    """The one test that converts real chorales (a handful): readers agree; the token round trip loses
    nothing but what encode counts, and every onset stays within one grid step."""
    from aurl.data.corpus import ensure_bach_midi

    folder = ensure_bach_midi(tmp_path / "bach", limit=3, workers=1, progress=False)
    files = sorted(folder.glob("*.mid"))
    assert len(files) == 3
    step = vocab.STEP_SECONDS
    for f in files:
        a, b = read_midi(f), read_midi_pretty(f)
        _assert_close_notes(a, b, tol=1e-4)
        st = codec.EncodeStats()
        dec = codec.decode(codec.encode(a, st))
        assert st.out_of_range == 0 and st.drums_kept == 0 and a.num_notes > 100
        assert dec.num_notes == a.num_notes - st.merged
        # every original note has a decoded note of its pitch starting within one step
        for p, s in zip(a.pitch, a.start, strict=True):
            assert np.min(np.abs(dec.start[dec.pitch == p] - s)) <= step
        # offsets: all but the counted truncations end within one step of an original note of that pitch
        ok_end = sum(np.min(np.abs(a.end[a.pitch == p] - e)) <= step for p, e in zip(dec.pitch, dec.end, strict=True))
        assert ok_end >= dec.num_notes - st.truncated


@pytest.mark.parametrize("seed", [0, 1])
def test_decoded_random_tokens_make_a_valid_midi_file(tmp_path, seed):
    tokens = np.random.default_rng(seed).integers(0, vocab.VOCAB_SIZE, 2000)
    score = codec.decode(tokens)
    write_midi(score, tmp_path / "gen.mid")
    back = read_midi(tmp_path / "gen.mid")
    assert back.num_notes == score.num_notes > 0
    # within a few ms even after thousands of seconds and dozens of tempo changes (30..240 BPM)
    _assert_close_notes(score, back, tol=vocab.STEP_SECONDS / 4)
    np.testing.assert_array_equal(codec.encode(back), codec.encode(score))


def test_the_pedal_is_down_from_value_64_and_a_drum_tracks_pedal_is_ignored(tmp_path):
    """CC64 is down at >= 64 (the MIDI spec's threshold), up below; a drum track's CC64 is no pedal. Four
    changes on the piano, one on the drums: four read, as pretty_midi's reader reads them.
    Mutations: down at > 64 -> the value-64 change reads up, fails; drum tracks' CC64 read -> five, fails."""
    import pretty_midi
    from midi_factory import make_pretty_midi

    pm = make_pretty_midi([(60, 0.0, 2.0, 80)])
    pm.instruments[0].control_changes += [pretty_midi.ControlChange(SUSTAIN_CC, v, t)
                                          for t, v in ((0.25, 64), (0.5, 63), (1.0, 127), (1.5, 0))]
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes.append(pretty_midi.Note(velocity=90, pitch=36, start=0.0, end=0.1))
    drums.control_changes.append(pretty_midi.ControlChange(SUSTAIN_CC, 127, 0.75))
    pm.instruments.append(drums)
    path = tmp_path / "pedal.mid"
    pm.write(str(path))
    got, ref = read_midi(path), read_midi_pretty(path)
    assert got.sustain_on.tolist() == ref.sustain_on.tolist() == [True, False, True, False]
    np.testing.assert_allclose(got.sustain_time, [0.25, 0.5, 1.0, 1.5], atol=1e-3)  # symusic: float32 seconds
