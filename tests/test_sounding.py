"""aurl.model.sounding: scoped_states, the grammar state per token in the (instrument, pitch) scope,
equals the sampler's token-by-token state (_track, itself checked against aurl.grammar.Walker in
test_grammar.py); sounding_states, the model's sounding-notes feature, equals the Walker's sounding set."""

from __future__ import annotations

import torch
from test_vaegan import _real_windows, _walker_sounding, batch

from aurl import vocab
from aurl.model.sampling import _track
from aurl.model.sounding import empty_state, scoped_states

# note events of a few pitches and instrument changes (drum kit included): the same pitch sounds on several
# instruments at once, and notes are left sounding across instrument changes
POOL = torch.cat([torch.arange(vocab.NOTE_ON_OFFSET, vocab.NOTE_ON_OFFSET + 6),
                  torch.arange(vocab.NOTE_OFF_OFFSET, vocab.NOTE_OFF_OFFSET + 6),
                  torch.arange(vocab.INSTRUMENT_OFFSET, vocab.INSTRUMENT_OFFSET + 3),
                  torch.tensor([vocab.DRUM_KIT_ID, vocab.TIME_SHIFT_OFFSET, vocab.END_ID])])


def _streams(n: int, length: int = 50):
    g = torch.Generator().manual_seed(0)
    return [POOL[torch.randint(0, len(POOL), (2, length), generator=g)] for _ in range(n)]


def test_every_position_matches_the_samplers_state():
    """Mutation: the instrument in force taken from the token itself only (no carry forward) -> fails."""
    compared = 0
    for ids in _streams(20):
        here, anything, _ = scoped_states(ids)
        sounding, family = state = empty_state(2)
        for t in range(ids.shape[1]):
            _track(state, ids[:, t])
            assert torch.equal(here[:, t], sounding[torch.arange(2), family]), t
            assert torch.equal(anything[:, t], sounding.flatten(1).any(-1)), t
            compared += 1
    assert compared == 20 * 50


def test_a_split_stream_continues_from_the_carried_state():
    """Two chunks, the second started from the first's end state, give the whole stream's states (how a KV
    cache or a sliding window continues), also when the second chunk never names an instrument that holds a
    note from the first (the note still sounds: END stays illegal). Mutations: `before` ignored -> fails;
    only the instruments named in the chunk scanned (without `held`) -> fails."""
    on, off, inst = vocab.note_on_id, vocab.note_off_id, vocab.family_token
    held = torch.tensor([[inst(1), on(60), inst(0), on(62), vocab.TIME_SHIFT_OFFSET, off(62), vocab.TIME_SHIFT_OFFSET]])
    for ids in [held, *_streams(10)]:
        here, anything, (after, family) = scoped_states(ids)
        cut = 4 if ids is held else 20
        h1, a1, state = scoped_states(ids[:, :cut])
        h2, a2, (after2, family2) = scoped_states(ids[:, cut:], state)
        assert torch.equal(torch.cat([h1, h2], 1), here) and torch.equal(torch.cat([a1, a2], 1), anything)
        assert torch.equal(after2, after) and torch.equal(family2, family)
    assert scoped_states(held)[1][0].tolist() == [False] + [True] * 6  # instrument 1's note sounds to the end


def test_sounding_feature_matches_the_grammar_walker_on_real_windows_and_on_any_tokens():
    """The feature's multi-hot is the Walker's sounding set after every token, instruments ignored: on
    loader-cut windows, and on random (ungrammatical) streams; continuing from a state (`before`) gives the
    same states as one pass over the whole sequence. (The sampler's grammar state, which keeps instruments
    apart, is checked against the walker in tests/test_grammar.py.)"""
    from aurl.model.sounding import sounding_states

    windows = _real_windows()
    random_ids, _ = batch(b=4, t=300, seed=5)
    compared = busy = 0
    for ids in (windows, random_ids):
        states = sounding_states(ids)
        for b, row in enumerate(ids.tolist()):
            assert torch.equal(states[b], _walker_sounding(row))
            compared += len(row)
            busy += int(states[b].any(-1).sum())
        for cut in (1, 37, ids.shape[1] - 1):
            rest = sounding_states(ids[:, cut:], before=states[:, cut - 1])
            assert torch.equal(rest, states[:, cut:])
    assert compared == windows.numel() + random_ids.numel() == 12 * 96 + 4 * 300
    assert busy > compared // 2  # mostly positions where notes sound: the comparison is not of empty sets
