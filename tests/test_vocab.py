"""aurl.vocab: the layout of the token ids, the spec and its hash, the velocity and tempo bins. (Encoding
and decoding: test_codec.py; the grammar: test_grammar.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest

from aurl import vocab


def test_layout_sizes_and_kinds():
    assert vocab.VOCAB_SIZE == 774
    assert [vocab.PAD_ID, vocab.START_ID, vocab.END_ID, vocab.UNK_ID] == [0, 1, 2, 3]
    assert vocab.SPECIAL_IDS == frozenset({0, 1, 2, 3})
    counts = {k: n for k, _, n in vocab.RANGES}
    assert counts == {
        "pad": 1, "start": 1, "end": 1, "unk": 1, "note_on": 88, "note_off": 88, "time_shift": 511,
        "drum_kit": 1, "velocity": 32, "sustain": 2, "tempo": 32, "instrument": 16,
    }
    for kind, off, n in vocab.RANGES:
        assert vocab.token_kind(off) == kind and vocab.token_kind(off + n - 1) == kind
    with pytest.raises(ValueError):
        vocab.token_kind(774)
    assert vocab.note_on_id(21) == vocab.NOTE_ON_OFFSET and vocab.note_off_id(108) == vocab.TIME_SHIFT_OFFSET - 1
    assert vocab.time_shift_id(511) == vocab.DRUM_KIT_ID - 1 and vocab.DRUM_KIT_ID == vocab.VELOCITY_OFFSET - 1
    # version 2 took the 512-step shift for the drum kit: every other id kept its version-1 value
    assert (vocab.DRUM_KIT_ID, vocab.VELOCITY_OFFSET, vocab.INSTRUMENT_OFFSET) == (691, 692, 758)
    assert [vocab.family_token(f) for f in (0, 15, 16)] == [758, 773, 691]
    assert vocab.family_of_token([758, 773, 691, 60]).tolist() == [0, 15, 16, -1]


def test_spec_is_json_and_hash_is_stable():
    spec = vocab.vocab_spec()
    assert json.loads(json.dumps(spec)) == spec
    assert vocab.vocab_hash() == vocab.vocab_hash() and len(vocab.vocab_hash()) == 64


def test_every_velocity_and_tempo_bin_is_reachable_and_stable():
    bins = vocab.velocity_bin(np.arange(1, 128))
    assert set(bins.tolist()) == set(range(32))
    assert (vocab.velocity_bin(vocab.velocity_of_bin(np.arange(32))) == np.arange(32)).all()
    assert (vocab.tempo_bin(vocab.tempo_of_bin(np.arange(32))) == np.arange(32)).all()
    assert set(vocab.tempo_bin(np.linspace(30, 240, 500)).tolist()) == set(range(32))


def test_the_spec_hash_is_pinned():
    """Every token cache and model file stores this hash and is refused when it differs: a change to
    vocab_spec() (even its wording) must be deliberate, with a version bump, and this pin updated with it."""
    assert vocab.vocab_spec()["version"] == 2
    assert vocab.vocab_hash() == "92a24e5f88262163b8d157f2c6389a743043d0a2d084ae536b16a8fa8a6f568b"


def test_a_tempo_falls_in_the_nearest_geometric_bin():
    """Bin k covers the tempos geometrically nearest to tempo_of_bin(k): the boundary between k and k + 1 is
    tempo_of_bin(k + 0.5), checked a relative 1e-9 on either side for all 31 boundaries; 30 and 240 BPM are the
    end bins, and tempos beyond them stay there."""
    for k in range(31):
        edge = float(vocab.tempo_of_bin(k + 0.5))
        assert vocab.tempo_bin(edge * (1 - 1e-9)) == k and vocab.tempo_bin(edge * (1 + 1e-9)) == k + 1, k
    assert vocab.tempo_bin([10.0, 30.0, 240.0, 400.0]).tolist() == [0, 0, 31, 31]


def test_a_note_before_any_velocity_token_sounds_at_velocity_64s_bin():
    """The state before any VELOCITY token (malformed input only) is velocity 64's bin, decoded as 66."""
    from aurl import codec

    assert vocab.DEFAULT_VELOCITY_BIN == 16
    tokens = [vocab.START_ID, vocab.note_on_id(60), vocab.time_shift_id(32), vocab.note_off_id(60), vocab.END_ID]
    notes = codec.decode(np.array(tokens)).notes
    assert len(notes) == 1 and notes[0].velocity == 66 and notes[0].pitch == 60
