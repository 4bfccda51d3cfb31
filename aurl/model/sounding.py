"""The "sounding notes" input feature: which of the 88 pitches sound after each token (model.sounding_embedding).

Why: a small decoder does not reliably track which pitches are held, so raw sampling writes NOTE_OFFs of
silent pitches and NOTE_ONs of sounding ones. The set is a pure function of the tokens (the grammar's rule:
NOTE_ON opens a pitch, NOTE_OFF closes it, nothing else touches it), so it is given to the model exactly
instead of being learned: a multi-hot [B, T, 88] projected by Linear(88, d_model, bias=False) and added to
the token embedding.

The rule for any input, grammatical or not: pitch p sounds after token t when the latest NOTE_ON/NOTE_OFF of p
at or before t is a NOTE_ON (or, with none, when p sounded in the state before the sequence). Instruments are
ignored: it is the pitches of aurl.grammar.Walker's ``state.sounding`` on the stream without its INSTRUMENT /
DRUM_KIT tokens. The grammar scopes notes by (instrument, pitch) (aurl.vocab, version 2), so with the same pitch
on two instruments at once the feature follows that pitch's latest event (a NOTE_OFF of one instrument shows
the pitch silent while the other holds it); with one instrument, as in the Bach chorales, the two agree
exactly. Kept per pitch because a per-(instrument, pitch) multi-hot would be 17 times wider at every position
(and in the KV cache's carried state) for a hint the model only needs per pitch; the sampler keeps the exact
scoped state for its grammar mask (aurl.model.sampling._grammar_state).

Vectorized: the index of each pitch's latest NOTE_ON and latest NOTE_OFF by a running maximum over time
(O(B * T * 88), no Python loop), so it costs nothing next to attention.
"""

from __future__ import annotations

import torch

from aurl.vocab import (
    DEFAULT_FAMILY,
    DRUM_FAMILY,
    DRUM_KIT_ID,
    END_ID,
    INSTRUMENT_OFFSET,
    NOTE_OFF_OFFSET,
    NOTE_ON_OFFSET,
    NUM_FAMILIES,
    NUM_INSTRUMENTS,
    NUM_PITCHES,
    PAD_ID,
    VOCAB_SIZE,
)


def _running_max(x: torch.Tensor) -> torch.Tensor:
    """cummax over dim 1. Over one position it is x itself: a decoded token then skips a kernel that
    torch.compile cannot fuse (one call of its own, ~5 us, twice a token)."""
    return x if x.shape[1] == 1 else x.cummax(dim=1).values


def sounding_states(input_ids: torch.Tensor, before: torch.Tensor | None = None) -> torch.Tensor:
    """[B, T] token ids -> [B, T, 88] bool: the pitches sounding after each token.

    before [B, 88] bool: the pitches sounding before input_ids[:, 0] (None = none), e.g. the state a KV cache
    has reached or the state at the start of a sliding context window.
    """
    B, T = input_ids.shape
    pitches = torch.arange(NUM_PITCHES, device=input_ids.device)
    time = torch.arange(T, device=input_ids.device).view(1, T, 1)
    ids = input_ids.unsqueeze(-1)
    never = torch.full((), -1, device=input_ids.device, dtype=torch.long)
    # index of the latest NOTE_ON / NOTE_OFF of each pitch so far (-1: none yet in this sequence)
    last_on = _running_max(torch.where(ids == NOTE_ON_OFFSET + pitches, time, never))
    last_off = _running_max(torch.where(ids == NOTE_OFF_OFFSET + pitches, time, never))
    states = last_on > last_off
    if before is not None:  # no event of the pitch yet in this sequence: the state before it holds
        untouched = (last_on < 0) & (last_off < 0)
        states = states | (untouched & before.bool().unsqueeze(1))
    return states


# ----------------------------------------------------------------------------------------------------------
# The grammar's own scope: (instrument, pitch)
GrammarState = tuple[torch.Tensor, torch.Tensor]  # sounding [B, 17, 88] bool, instrument in force [B] long


def empty_state(batch: int, device=None) -> GrammarState:
    """Nothing sounding, the default instrument in force: the state before a piece."""
    return (torch.zeros(batch, NUM_FAMILIES, NUM_PITCHES, dtype=torch.bool, device=device),
            torch.full((batch,), DEFAULT_FAMILY, dtype=torch.long, device=device))


def family_after(tokens: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """The instrument in force after each token: INSTRUMENT / DRUM_KIT set it, anything else keeps `current`."""
    inst = (tokens >= INSTRUMENT_OFFSET) & (tokens < INSTRUMENT_OFFSET + NUM_INSTRUMENTS)
    return torch.where(inst, tokens - INSTRUMENT_OFFSET, torch.where(tokens == DRUM_KIT_ID, DRUM_FAMILY, current))


def scoped_states(input_ids: torch.Tensor, before: GrammarState | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor, GrammarState]:
    """The grammar state after each token, in the grammar's (instrument, pitch) scope (aurl.grammar.Walker's
    rules, vectorized):

    - here [B, T, 88] bool: the pitches sounding on the instrument in force after each token (what decides
      whether the next NOTE_ON / NOTE_OFF is legal);
    - anything [B, T] bool: any note sounding, on any instrument (whether END is legal);
    - the state after the last token (sounding [B, 17, 88], instrument [B]), to continue from.

    One pass of sounding_states per instrument that occurs (one for a single-instrument piece): each sees only
    the note events of its own instrument, so the cost stays O(B * T * 88) per instrument, never 17 * 88 wide.
    """
    B, T = input_ids.shape
    device = input_ids.device
    sounding0, family0 = before if before is not None else empty_state(B, device)
    time = torch.arange(T, device=device).expand(B, T)
    set_here = family_after(input_ids, torch.full_like(input_ids, -1))
    latest = _running_max(torch.where(set_here >= 0, time, -1))
    family = torch.where(latest >= 0, set_here.gather(1, latest.clamp(min=0)), family0.view(B, 1))
    here = torch.zeros(B, T, NUM_PITCHES, dtype=torch.bool, device=device)
    anything = torch.zeros(B, T, dtype=torch.bool, device=device)
    after = sounding0.clone()
    held = sounding0.any(-1).any(0).nonzero().flatten()  # instruments holding notes from before
    for f in torch.cat([family.unique(), held]).unique().tolist():
        mine = family == f
        states = sounding_states(torch.where(mine, input_ids, PAD_ID), sounding0[:, f])
        here = torch.where(mine.unsqueeze(-1), states, here)
        anything |= states.any(-1)
        after[:, f] = states[:, -1] if T else sounding0[:, f]
    return here, anything, (after, family[:, -1].clone() if T else family0.clone())


def forbidden_next(here: torch.Tensor, anything: torch.Tensor) -> torch.Tensor:
    """The grammar's note rules as a mask: [..., 88] pitches sounding on the instrument in force and [...]
    whether any note sounds -> [..., VOCAB_SIZE] bool, True where the next token would break the grammar: a
    NOTE_ON of a sounding pitch, a NOTE_OFF of a silent one, END while a note sounds. One rule for the
    sampler's mask (aurl.model.sampling) and the unlikelihood term (aurl.model.grammar_loss)."""
    mask = torch.zeros(*here.shape[:-1], VOCAB_SIZE, dtype=torch.bool, device=here.device)
    mask[..., NOTE_ON_OFFSET:NOTE_ON_OFFSET + NUM_PITCHES] = here
    mask[..., NOTE_OFF_OFFSET:NOTE_OFF_OFFSET + NUM_PITCHES] = ~here
    mask[..., END_ID] = anything
    return mask
