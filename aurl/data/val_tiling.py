"""The validation windows' layout for many pieces at once: each piece tiled back to back, every window
starting where the previous one's own tokens end (aurl/data/dataset.py's validation layout).

Where a window starts depends on the length of the state prefix in front of the one before it (what is in
force there: tempo, sustain, the notes sounding, instrument, velocity; aurl.grammar.state_prefix), so the
tiling needs the state at every window start. Per piece (grammar.PieceStates, then state() and
state_prefix() at each start) that costs ~1 ms a piece: seconds for the ~5,000 validation pieces of a
100,000-file corpus, paid before a training run's first step. Here the same lengths come from one pass of
numpy over many pieces laid end to end, and the pieces advance in lockstep, one window start each per round.

The rules are grammar.PieceStates' and state_prefix's, restated on the pieces laid end to end (a piece's
state starts empty at its first token): tests check the result against the per-piece walk.
"""

from __future__ import annotations

import numpy as np

from aurl import vocab

CHUNK_TOKENS = 1 << 21  # pieces laid end to end per pass: bounds the pass's arrays (~100 MB) at any corpus size
_KIND = {name: i for i, name in enumerate(vocab.KIND_NAMES)}
_P = vocab.NUM_PITCHES
_FAMILY_OF_ID = vocab.family_of_token(np.arange(len(vocab.KIND_OF_ID))).astype(np.int64)  # a table: one gather


def tile_starts(pieces: list[np.ndarray], seq_len: int) -> list[np.ndarray]:
    """The window starts of each piece (int64, ascending, the first 0): for each piece, start 0, then each
    next start = start + seq_len - (state prefix length at start), until the piece ends."""
    out: list[np.ndarray | None] = [None] * len(pieces)
    chunk: list[int] = []
    size = 0
    second = max(1, seq_len // 2)  # the fewest own tokens of a window after the first (WindowDataset._state)
    for p, toks in enumerate(pieces):
        if len(toks) <= seq_len:  # one window: no prefix at the opening
            out[p] = np.zeros(1, dtype=np.int64)
            continue
        if len(toks) - seq_len <= second:  # two, whatever the prefix of the second
            out[p] = np.array([0, seq_len], dtype=np.int64)
            continue
        chunk.append(p)
        size += len(toks)
        if size >= CHUNK_TOKENS:
            _tile_chunk(pieces, chunk, seq_len, out)
            chunk, size = [], 0
    if chunk:
        _tile_chunk(pieces, chunk, seq_len, out)
    return out


def _tile_chunk(pieces: list[np.ndarray], chunk: list[int], seq_len: int, out: list) -> None:
    lengths = np.array([len(pieces[p]) for p in chunk], dtype=np.int64)
    states = _States(np.concatenate([np.asarray(pieces[p]) for p in chunk]), lengths)
    first = states.first
    starts: list[list[int]] = [[0] for _ in chunk]
    active = np.arange(len(chunk))
    pos = np.full(len(chunk), seq_len, dtype=np.int64)  # the first window holds seq_len own tokens
    room = seq_len - max(1, seq_len // 2)  # as WindowDataset._state: at least half a window is the piece's own
    while len(active):
        keep = pos[active] < lengths[active]
        active = active[keep]
        if not len(active):
            break
        for i, s in zip(active.tolist(), pos[active].tolist(), strict=True):
            starts[i].append(s)
        own = seq_len - states.prefix_lengths(first[active] + pos[active], room)
        assert (own > 0).all(), "every window holds some of its piece's tokens"
        pos[active] += own
    for i, p in enumerate(chunk):
        out[p] = np.array(starts[i], dtype=np.int64)


class _States:
    """What grammar.PieceStates precomputes, for pieces laid end to end (global token index g; piece i
    holds first[i] <= g < first[i] + lengths[i]), kept sparse: the positions of each kind of token that
    matters, so that only one gather and a few comparisons touch every token. prefix_lengths(g) is then
    len(state_prefix(state before g)) for any g."""

    def __init__(self, t: np.ndarray, lengths: np.ndarray):
        self.t = t
        self.first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        kinds = vocab.KIND_OF_ID[t]
        self.where = {k: np.flatnonzero(kinds == _KIND[k]) for k in ("tempo", "sustain", "velocity")}
        is_family = (kinds == _KIND["instrument"]) | (kinds == _KIND["drum_kit"])
        self.where["family"] = np.flatnonzero(is_family)
        self.fam_value = _FAMILY_OF_ID[t[self.where["family"]]]
        on = np.flatnonzero(kinds == _KIND["note_on"])
        off = np.flatnonzero(kinds == _KIND["note_off"])
        # the family and velocity in force at each note: the latest such token at or before it, in its piece
        fam_in_force = self._in_force(is_family, on, off)
        vel_in_force = self._in_force(kinds == _KIND["velocity"], on)
        piece = np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)
        piece_on, piece_off = piece[on].astype(np.int64), piece[off].astype(np.int64)
        fam_on, fam_off = (np.where(i >= self.first[p], _FAMILY_OF_ID[t[i]], vocab.DEFAULT_FAMILY)
                           for i, p in zip(fam_in_force, (piece_on, piece_off), strict=True))
        scope_on = (fam_on * _P + t[on] - vocab.NOTE_ON_OFFSET).astype(np.int16)
        scope_off = (fam_off * _P + t[off] - vocab.NOTE_OFF_OFFSET).astype(np.int16)
        # the k-th NOTE_ON of a scope ends at the k-th NOTE_OFF of that scope (as PieceStates pairs them):
        # sorted by scope (stable, a radix sort of int16), each scope's notes stay by position, so by piece
        by_on, by_off = np.argsort(scope_on, kind="stable"), np.argsort(scope_off, kind="stable")
        key_on = self._pair_keys(scope_on[by_on], piece_on[by_on], len(t))
        key_off = self._pair_keys(scope_off[by_off], piece_off[by_off], len(t))
        j = np.minimum(np.searchsorted(key_off, key_on), max(len(key_off) - 1, 0))
        matched = np.zeros(len(on), dtype=bool)
        matched[by_on] = key_off[j] == key_on if len(key_off) else False
        partner = np.zeros(len(on), dtype=np.int64)
        partner[by_on] = off[by_off][j] if len(off) else 0
        ends = self.first[piece_on] + lengths[piece_on]  # an unmatched note sounds to its piece's end
        # notes by onset (on is ascending), with the running maximum of their ends: the notes sounding at g
        # are among those from the first whose end reaches g up to the last that starts before g
        self.on, self.off, self.scope = on, np.where(matched, partner, ends), scope_on.astype(np.int64)
        vi = vel_in_force[0]
        self.vbin = np.where(vi >= self.first[piece_on], t[np.maximum(vi, 0)].astype(np.int64) - vocab.VELOCITY_OFFSET,
                             vocab.DEFAULT_VELOCITY_BIN)
        self.reach = np.maximum.accumulate(self.off) if len(on) else self.off

    @staticmethod
    def _in_force(mask: np.ndarray, *positions: np.ndarray) -> list[np.ndarray]:
        """For each array of positions: the latest position at or before each where mask holds (-1: none)."""
        latest = np.where(mask, np.arange(len(mask), dtype=np.int32), np.int32(-1))
        np.maximum.accumulate(latest, out=latest)
        return [latest[p].astype(np.int64) for p in positions]

    @staticmethod
    def _pair_keys(scope: np.ndarray, piece: np.ndarray, n: int) -> np.ndarray:
        """(scope, piece, rank of the note within its scope in its piece) as one ascending int64 (n tokens:
        below 1,496 x (n + 1)^2, which int64 holds up to n of ~78 million, far above a chunk)."""
        assert n < 50_000_000, n
        group = scope.astype(np.int64) * (n + 1) + piece
        return group * (n + 1) + _rank_in_group(group)

    def piece_of(self, g: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.first, g, side="right") - 1

    def _latest(self, kind: str, g: np.ndarray) -> np.ndarray:
        """The position of the latest token of `kind` before g in g's piece (-1: none)."""
        where = self.where[kind]
        j = np.searchsorted(where, g, side="left") - 1
        pos = where[np.maximum(j, 0)] if len(where) else np.full(len(g), -1)
        return np.where((j >= 0) & (pos >= self.first[self.piece_of(g - 1)]), pos, -1)

    def family_before(self, g: np.ndarray, default: int) -> np.ndarray:
        j = self._latest("family", g)
        k = np.searchsorted(self.where["family"], j)
        return np.where(j >= 0, self.fam_value[np.minimum(k, max(len(self.fam_value) - 1, 0))], default) \
            if len(self.fam_value) else np.full(len(g), default)

    def velocity_before(self, g: np.ndarray, default: int) -> np.ndarray:
        j = self._latest("velocity", g)
        return np.where(j >= 0, self.t[np.maximum(j, 0)].astype(np.int64) - vocab.VELOCITY_OFFSET, default)

    def prefix_lengths(self, g: np.ndarray, room: int) -> np.ndarray:
        """len(state_prefix(state before token g)) for each g (not a piece's first token), shortened as
        WindowDataset._state does when it exceeds `room`: without the notes, or empty."""
        ls = self._latest("sustain", g)
        head = (self._latest("tempo", g) >= 0).astype(np.int64) + ((ls >= 0) & (self.t[ls] == vocab.SUSTAIN_ON_ID))
        family, vbin = self.family_before(g, -1), self.velocity_before(g, -1)  # -1: None
        notes, last_fam, last_vb = self._sounding_tokens(g)
        full = head + notes + ((family >= 0) & (family != last_fam)) + ((vbin >= 0) & (vbin != last_vb))
        bare = head + (family >= 0) + (vbin >= 0)
        return np.where(full <= room, full, np.where(bare <= room, bare, 0))

    def _sounding_tokens(self, g: np.ndarray):
        """For each g: (tokens state_prefix writes for the notes sounding before g, the family and velocity
        bin it wrote last, -1 for none)."""
        n = len(g)
        lo, hi = np.searchsorted(self.reach, g, side="left"), np.searchsorted(self.on, g, side="left")
        count = np.maximum(hi - lo, 0)
        query = np.repeat(np.arange(n), count)
        cand = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(lo, count)
        sounding = self.off[cand] >= g[query]  # (on < g already; notes of other pieces end before g)
        query, cand = query[sounding], cand[sounding]
        # one per (query, scope): PieceStates writes them in (scope, onset) order into a dict, the last one
        # stays (cand follows the onsets)
        order = np.lexsort((cand, self.scope[cand], query))
        query, cand = query[order], cand[order]
        if not len(query):
            return np.zeros(n, dtype=np.int64), np.full(n, -1), np.full(n, -1)
        last = np.r_[(query[1:] != query[:-1]) | (self.scope[cand[1:]] != self.scope[cand[:-1]]), True]
        query, cand = query[last], cand[last]
        fam, vb = self.scope[cand] // _P, self.vbin[cand]
        opens = np.r_[True, query[1:] != query[:-1]]  # a query's first note writes its family and velocity
        new_fam = opens | np.r_[False, fam[1:] != fam[:-1]]
        new_vb = opens | np.r_[False, vb[1:] != vb[:-1]]
        tokens = np.bincount(query, weights=1 + new_fam + new_vb, minlength=n).astype(np.int64)
        closes = np.r_[query[1:] != query[:-1], True]  # a query's last note
        last_fam, last_vb = np.full(n, -1, dtype=np.int64), np.full(n, -1, dtype=np.int64)
        last_fam[query[closes]], last_vb[query[closes]] = fam[closes], vb[closes]
        return tokens, last_fam, last_vb


def _rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    if not len(sorted_keys):
        return sorted_keys
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    return np.arange(len(sorted_keys)) - np.repeat(starts, np.diff(np.r_[starts, len(sorted_keys)]))
