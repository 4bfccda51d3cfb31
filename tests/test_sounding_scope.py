"""aurl.model.sounding.scoped_states: the grammar state per token in the (instrument, pitch) scope equals the
sampler's token-by-token state (_track, itself checked against aurl.grammar.Walker in test_grammar.py)."""

from __future__ import annotations

import torch

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
    cache or a sliding window continues). Mutation: `before` ignored -> fails."""
    for ids in _streams(10):
        here, anything, (after, family) = scoped_states(ids)
        h1, a1, state = scoped_states(ids[:, :20])
        h2, a2, (after2, family2) = scoped_states(ids[:, 20:], state)
        assert torch.equal(torch.cat([h1, h2], 1), here) and torch.equal(torch.cat([a1, a2], 1), anything)
        assert torch.equal(after2, after) and torch.equal(family2, family)
