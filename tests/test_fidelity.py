"""Every note of multi-track MIDI survives the vocabulary: doublings across instruments, overlaps and drums.

The arrangements are built here (tests/midi_factory.arrangement_midi: a pop band and a small orchestra, chords
held on one instrument while others strike the same pitches, melodies doubled in unison by a second family,
drums), written as MIDI files and read back with the pipeline's reader. A note is preserved when the decoded
piece has a note of the same pitch and the same instrument family (or both drums) whose onset and offset lie
within one grid step of it, each decoded note matched once.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
from midi_factory import arrangement_midi

from aurl import codec, vocab
from aurl.data.midi_io import read_midi, write_midi
from aurl.score import Score

STEP = vocab.STEP_SECONDS
TOL = STEP + 1e-6  # one grid step (quantizing moves a time by half a step at most; MIDI ticks by < 1 ms)


def _scope(score: Score) -> np.ndarray:
    return np.where(score.is_drum, vocab.DRUM_FAMILY, vocab.instrument_family(score.program))


def preserved(orig: Score, dec: Score) -> tuple[int, int]:
    """(in-range notes of orig, how many of them dec preserves), matching one to one in onset order."""
    pool: dict[tuple[int, int], list[list]] = defaultdict(list)
    for f, p, s, e in zip(_scope(dec).tolist(), dec.pitch.tolist(), dec.start.tolist(), dec.end.tolist(),
                          strict=True):
        pool[(f, p)].append([s, e, False])
    keep = (orig.pitch >= vocab.MIN_PITCH) & (orig.pitch <= vocab.MAX_PITCH)
    rows = sorted(zip(orig.start[keep].tolist(), orig.end[keep].tolist(), _scope(orig)[keep].tolist(),
                      orig.pitch[keep].tolist(), strict=True))
    found = 0
    for s, e, f, p in rows:
        for cand in pool[(f, p)]:
            # a note shorter than one step lasts one step: only its onset can be compared
            end_ok = abs(cand[1] - e) <= TOL or (e - s < STEP and abs(cand[1] - cand[0] - STEP) < 1e-9)
            if not cand[2] and abs(cand[0] - s) <= TOL and end_ok:
                cand[2] = True
                found += 1
                break
    return len(rows), found


CASES = [(style, seed, ov) for style in ("pop", "orchestral") for seed in (0, 1) for ov in (False, True)]


@pytest.mark.parametrize("style,seed,overlaps", CASES,
                         ids=[f"{s}-seed{n}-{'overlaps' if o else 'clean'}" for s, n, o in CASES])
def test_multitrack_notes_survive_the_round_trip(tmp_path, style, seed, overlaps):
    path = tmp_path / "arrangement.mid"
    arrangement_midi(seed, style, same_instrument_overlaps=overlaps).write(str(path))
    orig = read_midi(path)
    st = codec.EncodeStats()
    dec = codec.decode(codec.encode(orig, st))
    total, found = preserved(orig, dec)
    assert total == orig.num_notes - st.out_of_range and total > 1000 and st.out_of_range == 2
    assert st.drums_kept == int(orig.is_drum.sum()) == int(dec.is_drum.sum()) > 200
    if not overlaps:  # doublings across instruments and drums: nothing merged, cut or lost
        assert st.merged == st.truncated == 0 and found == total, (st, total - found)
    else:  # only the same-family overlaps cost notes, one each, and each is counted
        assert st.merged > 0 and st.truncated > 0
        assert total - found == st.merged + st.truncated and found >= 0.99 * total, (st, total - found)


def test_drums_come_back_as_a_drum_track_on_channel_10(tmp_path):
    import mido

    path = tmp_path / "arrangement.mid"
    arrangement_midi(2, "pop").write(str(path))
    dec = codec.decode(codec.encode(read_midi(path)))
    write_midi(dec, tmp_path / "back.mid")
    back = read_midi(tmp_path / "back.mid")
    assert int(back.is_drum.sum()) == int(dec.is_drum.sum()) > 200 and back.num_notes == dec.num_notes
    total, found = preserved(dec, back)
    assert found == total == dec.num_notes
    channels = {m.channel for tr in mido.MidiFile(tmp_path / "back.mid").tracks for m in tr
                if m.type == "note_on"}
    assert 9 in channels and len(channels) > 1  # channel 10 (9 from 0) carries the kit, others the rest
