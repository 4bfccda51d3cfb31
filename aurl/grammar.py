"""The event grammar as one walker over token streams: the state in force at any token.

State = clock (grid steps), tempo bin, sustain pedal, instrument in force (a GM family 0..15, or the drum kit
16), velocity bin and the notes sounding: (instrument, pitch) -> onset step, velocity bin. A NOTE_ON / NOTE_OFF
acts on the pitch of the instrument in force (aurl.vocab's note scope). Three ways to get the state, with
the same rules:

- ``Walker``: token by token (Python), for code that reacts to each event (aurl.codec.decode;
  ``grammar_errors``, the grammar check of generated sequences; aurl.model.sampling.finalize). It applies
  decode's rules to any input: a NOTE_ON of a sounding (instrument, pitch) restarts the note (a duplicate at
  the same step is dropped), a NOTE_OFF of a silent one is ignored.
- ``state_at(tokens, pos)``: the state before token ``pos`` of a piece, vectorized numpy over the prefix, and
  ``PieceStates``: the same for every position of one piece after one O(length) pass (the loader's windows).
- aurl.model.sampling keeps the same state as tensors ([batch, instrument, pitch] sounding, instrument in
  force per row) for the grammar-constrained sampler; tests check it against this walker token by token.

``state_prefix(state)`` writes a state as tokens: TEMPO, SUSTAIN_ON when the pedal is down, then
INSTRUMENT (or DRUM_KIT) / VELOCITY / NOTE_ON for each sounding note (by instrument, pitch; INSTRUMENT and
VELOCITY only when they change, as encode writes them), then INSTRUMENT / VELOCITY of the state in force where
they differ from the last written. A window that starts with it is self-contained: it decodes to the notes of
the piece over its span (sounding notes start at the window's first step) and has no NOTE_OFF without its
NOTE_ON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aurl import vocab

_KIND = {name: i for i, name in enumerate(vocab.KIND_NAMES)}
_ON, _OFF, _TS = vocab.NOTE_ON_OFFSET, vocab.NOTE_OFF_OFFSET, vocab.TIME_SHIFT_OFFSET
_P = vocab.NUM_PITCHES


@dataclass
class State:
    """What is in force before a token. None = no token of that kind seen yet (decode's defaults apply)."""

    step: int = 0
    tempo: int | None = None
    sustain: bool = False
    family: int | None = None
    vbin: int | None = None
    sounding: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)  # (fam, pitch) -> (onset, vbin)


class Walker:
    """Feed tokens one at a time; ``state`` is the state after the last token fed.

    feed() returns what the token did: "on" (a note starts), "on_again" (NOTE_ON of a sounding note: the old
    note ends here and a new one starts), "on_dup" (the same at the step the note started: dropped), "off" (a
    sounding note ends), "off_silent" (NOTE_OFF of a note not sounding: ignored), "shift", "velocity",
    "sustain", "tempo", "instrument" (INSTRUMENT or DRUM_KIT), "special" (PAD/START/END/UNK) or
    "out_of_vocab". collect=True keeps every note that ends in ``notes`` as (family, pitch, start step,
    end step, velocity bin); a note lasts at least one step.
    """

    def __init__(self, state: State | None = None, collect: bool = False):
        self.state = state if state is not None else State()
        self.notes: list[tuple[int, int, int, int, int]] | None = [] if collect else None

    def feed(self, t: int) -> str:
        s = self.state
        if t < 0 or t >= vocab.VOCAB_SIZE:
            return "out_of_vocab"
        if t < _ON:
            return "special"
        if t < _OFF:
            key = (self.family, t - _ON + vocab.MIN_PITCH)
            old = s.sounding.get(key)
            what = "on"
            if old is not None:
                if old[0] == s.step:
                    return "on_dup"
                self._close(key)
                what = "on_again"
            s.sounding[key] = (s.step, self.vbin)
            return what
        if t < _TS:
            key = (self.family, t - _OFF + vocab.MIN_PITCH)
            if key not in s.sounding:
                return "off_silent"
            self._close(key)
            return "off"
        if t < vocab.DRUM_KIT_ID:
            s.step += t - _TS + 1
            return "shift"
        if t == vocab.DRUM_KIT_ID:
            s.family = vocab.DRUM_FAMILY
            return "instrument"
        if t < vocab.SUSTAIN_OFFSET:
            s.vbin = t - vocab.VELOCITY_OFFSET
            return "velocity"
        if t < vocab.TEMPO_OFFSET:
            s.sustain = t == vocab.SUSTAIN_ON_ID
            return "sustain"
        if t < vocab.INSTRUMENT_OFFSET:
            s.tempo = t - vocab.TEMPO_OFFSET
            return "tempo"
        s.family = t - vocab.INSTRUMENT_OFFSET
        return "instrument"

    def _close(self, key: tuple[int, int]) -> None:
        onset, vb = self.state.sounding.pop(key)
        if self.notes is not None:
            self.notes.append((key[0], key[1], onset, max(self.state.step, onset + 1), vb))

    def close_all(self) -> list[int]:
        """End every sounding note here; returns the tokens that say so (by instrument, pitch, with
        INSTRUMENT / DRUM_KIT where the instrument changes): what finalize appends to a cut-off piece."""
        out = []
        for fam, pitch in sorted(self.state.sounding):
            if fam != self.family:
                out.append(vocab.family_token(fam))
                self.state.family = fam
            out.append(vocab.note_off_id(pitch))
            self._close((fam, pitch))
        return out

    @property
    def vbin(self) -> int:
        return vocab.DEFAULT_VELOCITY_BIN if self.state.vbin is None else self.state.vbin

    @property
    def family(self) -> int:
        return vocab.DEFAULT_FAMILY if self.state.family is None else self.state.family


# ----------------------------------------------------------------------------------------------------------
# Grammar check (evaluation of generated sequences)
def grammar_errors(tokens) -> dict[str, int]:
    """Counts of grammar violations in a token sequence (all zero for anything encode() produced).

    The note scope is (instrument in force, pitch). note_off_without_on: NOTE_OFF of a pitch not sounding on
    that instrument; duplicate_note_on: NOTE_ON of a pitch already sounding on it; unclosed_notes: notes
    still open at the end; special_inside: START/END/PAD/UNK anywhere but a leading START, a trailing END and
    trailing PADs; out_of_vocab: ids outside [0, VOCAB_SIZE).
    """
    toks = np.asarray(tokens).astype(np.int64).ravel().tolist()
    errors = {
        "note_off_without_on": 0,
        "duplicate_note_on": 0,
        "unclosed_notes": 0,
        "special_inside": 0,
        "out_of_vocab": 0,
    }
    # strip framing: leading START, trailing PADs, then a trailing END
    lo, hi = 0, len(toks)
    while hi > lo and toks[hi - 1] == vocab.PAD_ID:
        hi -= 1
    if hi > lo and toks[hi - 1] == vocab.END_ID:
        hi -= 1
    if hi > lo and toks[lo] == vocab.START_ID:
        lo += 1
    walker = Walker()  # the one grammar walker decides what each token does
    counted = {"out_of_vocab": "out_of_vocab", "special": "special_inside", "on_again": "duplicate_note_on",
               "on_dup": "duplicate_note_on", "off_silent": "note_off_without_on"}
    for t in toks[lo:hi]:
        what = counted.get(walker.feed(t))
        if what is not None:
            errors[what] += 1
    errors["unclosed_notes"] = len(walker.state.sounding)
    return errors


# ----------------------------------------------------------------------------------------------------------
# Vectorized state
def family_at(tokens) -> np.ndarray:
    """The instrument in force at each token (after the latest INSTRUMENT / DRUM_KIT at or before it;
    DEFAULT_FAMILY before any), vectorized: the family a NOTE_ON / NOTE_OFF there acts on."""
    t = np.asarray(tokens).astype(np.int64)
    fam = vocab.family_of_token(t)
    latest = np.maximum.accumulate(np.where(fam >= 0, np.arange(len(t)), -1)) if len(t) else fam
    return np.where(latest >= 0, fam[np.maximum(latest, 0)], vocab.DEFAULT_FAMILY) if len(t) else fam


def _scope(t: np.ndarray, idx: np.ndarray, fam: np.ndarray, offset: int) -> np.ndarray:
    """(instrument, pitch) of the note tokens at idx as one integer: family * 88 + pitch index."""
    return fam[idx] * _P + t[idx] - offset


def _last_value(t: np.ndarray, kinds: np.ndarray, kind: str, offset: int) -> int | None:
    where = np.flatnonzero(kinds == _KIND[kind])
    return int(t[where[-1]]) - offset if len(where) else None


def state_at(tokens, pos: int) -> State:
    """The state before token ``pos`` of a grammatical stream (what encode writes), vectorized.

    Equal to feeding tokens[:pos] to a Walker (tests check it); for a stream with NOTE_ONs of sounding notes
    the onset kept is the latest one.
    """
    t = np.asarray(tokens[:pos]).astype(np.int64)
    kinds = vocab.KIND_OF_ID[t]
    steps = vocab.shift_steps(t)
    st = State(step=int(steps.sum()))
    st.tempo = _last_value(t, kinds, "tempo", vocab.TEMPO_OFFSET)
    st.sustain = _last_value(t, kinds, "sustain", vocab.SUSTAIN_OFFSET) == 0  # bin 0 = SUSTAIN_ON
    st.vbin = _last_value(t, kinds, "velocity", vocab.VELOCITY_OFFSET)
    fam_tokens = np.flatnonzero(vocab.family_of_token(t) >= 0)
    st.family = int(vocab.family_of_token(t[fam_tokens[-1]])) if len(fam_tokens) else None
    on_idx = np.flatnonzero(kinds == _KIND["note_on"])
    if not len(on_idx):
        return st
    fam = family_at(t)
    off_idx = np.flatnonzero(kinds == _KIND["note_off"])
    last_on = np.full(vocab.NUM_FAMILIES * _P, -1, dtype=np.int64)
    last_off = np.full(vocab.NUM_FAMILIES * _P, -1, dtype=np.int64)
    np.maximum.at(last_on, _scope(t, on_idx, fam, _ON), on_idx)
    np.maximum.at(last_off, _scope(t, off_idx, fam, _OFF), off_idx)
    scopes = np.flatnonzero(last_on > last_off)
    onset = last_on[scopes]
    clock = np.cumsum(steps)  # clock after each token; a NOTE_ON adds 0, so this is its onset step
    vel_idx = np.flatnonzero(kinds == _KIND["velocity"])
    vj = np.searchsorted(vel_idx, onset) - 1
    vb = np.where(vj >= 0, t[vel_idx[np.maximum(vj, 0)]] - vocab.VELOCITY_OFFSET, vocab.DEFAULT_VELOCITY_BIN) \
        if len(vel_idx) else np.full(len(onset), vocab.DEFAULT_VELOCITY_BIN)
    for k, i, v in zip(scopes.tolist(), onset.tolist(), vb.tolist(), strict=True):
        st.sounding[(k // _P, k % _P + vocab.MIN_PITCH)] = (int(clock[i]), int(v))
    return st


def state_prefix(state: State, with_notes: bool = True) -> np.ndarray:
    """The tokens that put a fresh stream into ``state`` (see the module docstring); int16.

    with_notes=False leaves the sounding notes out (only for windows too short to hold them).
    """
    out: list[int] = []
    if state.tempo is not None:
        out.append(vocab.TEMPO_OFFSET + state.tempo)
    if state.sustain:
        out.append(vocab.SUSTAIN_ON_ID)
    fam = vb = None
    if with_notes:
        for (f, p), (_, v) in sorted(state.sounding.items()):
            if f != fam:
                out.append(vocab.family_token(f))
                fam = f
            if v != vb:
                out.append(vocab.VELOCITY_OFFSET + v)
                vb = v
            out.append(vocab.note_on_id(p))
    if state.family is not None and state.family != fam:
        out.append(vocab.family_token(state.family))
    if state.vbin is not None and state.vbin != vb:
        out.append(vocab.VELOCITY_OFFSET + state.vbin)
    return np.array(out, dtype=np.int16)


class PieceStates:
    """The state before any position of one grammatical piece, precomputed once (vectorized, O(length)).

    ``state(pos)`` then costs O(notes of the piece) numpy plus the notes sounding, instead of a walk over
    the whole prefix: the loader asks for one state per window, and a long piece would otherwise make each
    window pay for the tokens before it. Equal to ``state_at(tokens, pos)`` (tests check it).
    """

    _KINDS = ("tempo", "sustain", "velocity")

    def __init__(self, tokens):
        t = np.asarray(tokens).astype(np.int64)
        kinds = vocab.KIND_OF_ID[t]
        idx = np.arange(len(t))
        self.tokens = t
        self.clock = np.concatenate([[0], np.cumsum(vocab.shift_steps(t))])  # clock before token i
        # index of the latest token of each kind at or before i (-1: none yet)
        self.latest = {k: np.maximum.accumulate(np.where(kinds == _KIND[k], idx, -1)) if len(t) else idx
                       for k in self._KINDS}
        fam_of = vocab.family_of_token(t)
        self.latest["family"] = np.maximum.accumulate(np.where(fam_of >= 0, idx, -1)) if len(t) else idx
        self._fam_of = fam_of
        fam = family_at(t)
        on = np.flatnonzero(kinds == _KIND["note_on"])
        off = np.flatnonzero(kinds == _KIND["note_off"])
        k_on, k_off = _scope(t, on, fam, _ON), _scope(t, off, fam, _OFF)
        # the k-th NOTE_ON of a scope ends at the k-th NOTE_OFF of that scope (a grammatical stream)
        on, k_on = on[np.lexsort((on, k_on))], np.sort(k_on, kind="stable")
        off, k_off = off[np.lexsort((off, k_off))], np.sort(k_off, kind="stable")
        key_on = k_on * len(t) + _rank_in_group(k_on)
        key_off = k_off * len(t) + _rank_in_group(k_off)
        j = np.searchsorted(key_off, key_on)
        matched = (j < len(key_off)) & (key_off[np.minimum(j, max(len(key_off) - 1, 0))] == key_on) \
            if len(key_off) else np.zeros(len(key_on), dtype=bool)
        self.note_on = on
        self.note_off = np.where(matched, off[np.minimum(j, max(len(off) - 1, 0))] if len(off) else 0, len(t))
        self.note_scope = k_on
        last = self.latest["velocity"][on] if len(on) else on
        self.note_vbin = np.where(last >= 0, t[np.maximum(last, 0)] - vocab.VELOCITY_OFFSET,
                                  vocab.DEFAULT_VELOCITY_BIN) if len(on) else on

    def _last(self, kind: str, pos: int, offset: int) -> int | None:
        i = int(self.latest[kind][pos - 1]) if pos > 0 else -1
        return int(self.tokens[i]) - offset if i >= 0 else None

    def state(self, pos: int) -> State:
        st = State(step=int(self.clock[pos]))
        st.tempo = self._last("tempo", pos, vocab.TEMPO_OFFSET)
        st.sustain = self._last("sustain", pos, vocab.SUSTAIN_OFFSET) == 0
        st.vbin = self._last("velocity", pos, vocab.VELOCITY_OFFSET)
        i = int(self.latest["family"][pos - 1]) if pos > 0 else -1
        st.family = int(self._fam_of[i]) if i >= 0 else None
        for k in np.flatnonzero((self.note_on < pos) & (self.note_off >= pos)).tolist():
            scope = int(self.note_scope[k])
            st.sounding[(scope // _P, scope % _P + vocab.MIN_PITCH)] = (int(self.clock[self.note_on[k]]),
                                                                      int(self.note_vbin[k]))
        return st


def _rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    if not len(sorted_keys):
        return sorted_keys
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return np.arange(len(sorted_keys)) - np.repeat(starts, np.diff(np.r_[starts, len(sorted_keys)]))
