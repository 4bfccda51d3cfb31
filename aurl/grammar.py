"""The event grammar as one walker over token streams: the state in force at any token.

State = clock (grid steps), tempo bin, sustain pedal, instrument family, velocity bin and the notes sounding
(pitch -> onset step, velocity bin, family). Two ways to get it, with the same rules:

- ``Walker``: token by token (Python), for code that reacts to each event (aurl.vocab.decode and
  grammar_errors, aurl.model.sampling.finalize).
- ``state_at(tokens, pos)``: the state before token ``pos`` of a piece, vectorized numpy over the prefix (the
  loader calls it per window; a Python walk of a long prefix would dominate loading).

``state_prefix(state)`` writes that state as tokens: TEMPO, SUSTAIN_ON when the pedal is down, then
INSTRUMENT / VELOCITY / NOTE_ON for each sounding note (by family, pitch; INSTRUMENT and VELOCITY only when
they change, as encode writes them), then INSTRUMENT / VELOCITY of the state in force where they differ from
the last written. A window that starts with it is self-contained: it decodes to the notes of the piece over
its span (sounding notes start at the window's first step) and has no NOTE_OFF without its NOTE_ON.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aurl import vocab

_KIND = {name: i for i, name in enumerate(vocab.KIND_NAMES)}
_ON, _OFF, _TS = vocab.NOTE_ON_OFFSET, vocab.NOTE_OFF_OFFSET, vocab.TIME_SHIFT_OFFSET


@dataclass
class State:
    """What is in force before a token. None = no token of that kind seen yet (decode's defaults apply)."""

    step: int = 0
    tempo: int | None = None
    sustain: bool = False
    family: int | None = None
    vbin: int | None = None
    sounding: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # pitch -> (onset step, vbin, fam)


class Walker:
    """Feed tokens one at a time; ``state`` is the state after the last token fed.

    feed() returns what the token did, so callers keep their own rules for the irregular cases:
    "on" (a note starts), "on_again" (NOTE_ON of a sounding pitch), "off" (a sounding note ends),
    "off_silent" (NOTE_OFF of a pitch not sounding), "shift", "velocity", "sustain", "tempo", "instrument",
    "special" (PAD/START/END/UNK) or "out_of_vocab". The walker itself only tracks: on_again leaves the old
    note in ``sounding`` (the caller decides to close it, keep it or drop the token: see ``restart``).
    """

    def __init__(self, state: State | None = None):
        self.state = state if state is not None else State()

    def feed(self, t: int) -> str:
        s = self.state
        if t < 0 or t >= vocab.VOCAB_SIZE:
            return "out_of_vocab"
        if t < _ON:
            return "special"
        if t < _OFF:
            p = t - _ON + vocab.MIN_PITCH
            if p in s.sounding:
                return "on_again"
            s.sounding[p] = (s.step, self.vbin, self.family)
            return "on"
        if t < _TS:
            p = t - _OFF + vocab.MIN_PITCH
            if s.sounding.pop(p, None) is None:
                return "off_silent"
            return "off"
        if t < vocab.VELOCITY_OFFSET:
            s.step += t - _TS + 1
            return "shift"
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

    def restart(self, pitch: int) -> tuple[int, int, int]:
        """After "on_again": start the pitch anew at the current step; returns the old note's entry."""
        old = self.state.sounding[pitch]
        self.state.sounding[pitch] = (self.state.step, self.vbin, self.family)
        return old

    @property
    def vbin(self) -> int:
        return vocab.DEFAULT_VELOCITY_BIN if self.state.vbin is None else self.state.vbin

    @property
    def family(self) -> int:
        return vocab.DEFAULT_FAMILY if self.state.family is None else self.state.family


def _last_value(t: np.ndarray, kinds: np.ndarray, kind: str, offset: int) -> int | None:
    where = np.flatnonzero(kinds == _KIND[kind])
    return int(t[where[-1]]) - offset if len(where) else None


def state_at(tokens, pos: int) -> State:
    """The state before token ``pos`` of a grammatical stream (what encode writes), vectorized.

    Equal to feeding tokens[:pos] to a Walker (tests check it); for a stream with NOTE_ONs of sounding pitches
    the onset kept is the latest one.
    """
    t = np.asarray(tokens[:pos]).astype(np.int64)
    kinds = vocab.KIND_OF_ID[t]
    steps = vocab.shift_steps(t)
    st = State(step=int(steps.sum()))
    st.tempo = _last_value(t, kinds, "tempo", vocab.TEMPO_OFFSET)
    st.sustain = _last_value(t, kinds, "sustain", vocab.SUSTAIN_OFFSET) == 0  # bin 0 = SUSTAIN_ON
    st.family = _last_value(t, kinds, "instrument", vocab.INSTRUMENT_OFFSET)
    st.vbin = _last_value(t, kinds, "velocity", vocab.VELOCITY_OFFSET)
    on_idx = np.flatnonzero(kinds == _KIND["note_on"])
    if not len(on_idx):
        return st
    last_on = np.full(vocab.NUM_PITCHES, -1, dtype=np.int64)
    last_off = np.full(vocab.NUM_PITCHES, -1, dtype=np.int64)
    np.maximum.at(last_on, t[on_idx] - _ON, on_idx)
    off_idx = np.flatnonzero(kinds == _KIND["note_off"])
    np.maximum.at(last_off, t[off_idx] - _OFF, off_idx)
    pitches = np.flatnonzero(last_on > last_off)
    if not len(pitches):
        return st
    onset = last_on[pitches]
    clock = np.cumsum(steps)  # clock after each token; a NOTE_ON adds 0, so this is its onset step
    vel_idx = np.flatnonzero(kinds == _KIND["velocity"])
    fam_idx = np.flatnonzero(kinds == _KIND["instrument"])
    vj = np.searchsorted(vel_idx, onset) - 1
    fj = np.searchsorted(fam_idx, onset) - 1
    vb = np.where(vj >= 0, t[vel_idx[np.maximum(vj, 0)]] - vocab.VELOCITY_OFFSET, vocab.DEFAULT_VELOCITY_BIN) \
        if len(vel_idx) else np.full(len(onset), vocab.DEFAULT_VELOCITY_BIN)
    fa = np.where(fj >= 0, t[fam_idx[np.maximum(fj, 0)]] - vocab.INSTRUMENT_OFFSET, vocab.DEFAULT_FAMILY) \
        if len(fam_idx) else np.full(len(onset), vocab.DEFAULT_FAMILY)
    for p, i, v, f in zip(pitches.tolist(), onset.tolist(), vb.tolist(), fa.tolist(), strict=True):
        st.sounding[p + vocab.MIN_PITCH] = (int(clock[i]), int(v), int(f))
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
        for p, (_, v, f) in sorted(state.sounding.items(), key=lambda kv: (kv[1][2], kv[0])):
            if f != fam:
                out.append(vocab.INSTRUMENT_OFFSET + f)
                fam = f
            if v != vb:
                out.append(vocab.VELOCITY_OFFSET + v)
                vb = v
            out.append(vocab.note_on_id(p))
    if state.family is not None and state.family != fam:
        out.append(vocab.INSTRUMENT_OFFSET + state.family)
    if state.vbin is not None and state.vbin != vb:
        out.append(vocab.VELOCITY_OFFSET + state.vbin)
    return np.array(out, dtype=np.int16)


class PieceStates:
    """The state before any position of one grammatical piece, precomputed once (vectorized, O(length)).

    ``state(pos)`` then costs O(notes of the piece) numpy plus the notes sounding, instead of a walk over
    the whole prefix: the loader asks for one state per window, and a long piece would otherwise make each
    window pay for the tokens before it. Equal to ``state_at(tokens, pos)`` (tests check it).
    """

    _KINDS = ("tempo", "sustain", "instrument", "velocity")

    def __init__(self, tokens):
        t = np.asarray(tokens).astype(np.int64)
        kinds = vocab.KIND_OF_ID[t]
        idx = np.arange(len(t))
        self.tokens = t
        self.clock = np.concatenate([[0], np.cumsum(vocab.shift_steps(t))])  # clock before token i
        # index of the latest token of each kind at or before i (-1: none yet)
        self.latest = {k: np.maximum.accumulate(np.where(kinds == _KIND[k], idx, -1)) if len(t) else idx
                       for k in self._KINDS}
        on = np.flatnonzero(kinds == _KIND["note_on"])
        off = np.flatnonzero(kinds == _KIND["note_off"])
        p_on, p_off = t[on] - _ON, t[off] - _OFF
        # the k-th NOTE_ON of a pitch ends at the k-th NOTE_OFF of that pitch (a grammatical stream)
        on, p_on = on[np.lexsort((on, p_on))], np.sort(p_on, kind="stable")
        off, p_off = off[np.lexsort((off, p_off))], np.sort(p_off, kind="stable")
        key_on = p_on * len(t) + _rank_in_group(p_on)
        key_off = p_off * len(t) + _rank_in_group(p_off)
        j = np.searchsorted(key_off, key_on)
        matched = (j < len(key_off)) & (key_off[np.minimum(j, max(len(key_off) - 1, 0))] == key_on) \
            if len(key_off) else np.zeros(len(key_on), dtype=bool)
        self.note_on = on
        self.note_off = np.where(matched, off[np.minimum(j, max(len(off) - 1, 0))] if len(off) else 0, len(t))
        self.note_pitch = p_on + vocab.MIN_PITCH
        self.note_vbin = self._value_at("velocity", on, vocab.VELOCITY_OFFSET, vocab.DEFAULT_VELOCITY_BIN)
        self.note_family = self._value_at("instrument", on, vocab.INSTRUMENT_OFFSET, vocab.DEFAULT_FAMILY)

    def _value_at(self, kind: str, where: np.ndarray, offset: int, default: int) -> np.ndarray:
        last = self.latest[kind][where] if len(where) else where
        return np.where(last >= 0, self.tokens[np.maximum(last, 0)] - offset, default) if len(where) else where

    def _last(self, kind: str, pos: int, offset: int) -> int | None:
        i = int(self.latest[kind][pos - 1]) if pos > 0 else -1
        return int(self.tokens[i]) - offset if i >= 0 else None

    def state(self, pos: int) -> State:
        st = State(step=int(self.clock[pos]))
        st.tempo = self._last("tempo", pos, vocab.TEMPO_OFFSET)
        st.sustain = self._last("sustain", pos, vocab.SUSTAIN_OFFSET) == 0
        st.family = self._last("instrument", pos, vocab.INSTRUMENT_OFFSET)
        st.vbin = self._last("velocity", pos, vocab.VELOCITY_OFFSET)
        for k in np.flatnonzero((self.note_on < pos) & (self.note_off >= pos)).tolist():
            st.sounding[int(self.note_pitch[k])] = (int(self.clock[self.note_on[k]]), int(self.note_vbin[k]),
                                                    int(self.note_family[k]))
        return st


def _rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    if not len(sorted_keys):
        return sorted_keys
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return np.arange(len(sorted_keys)) - np.repeat(starts, np.diff(np.r_[starts, len(sorted_keys)]))
