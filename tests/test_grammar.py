"""aurl.grammar: the walker, the vectorized state, and windows that carry their state."""

from __future__ import annotations

import numpy as np
import pytest
from midi_factory import random_score

from aurl import codec, grammar, vocab


def _piece(seed: int) -> np.ndarray:
    """A grammatical stream with overlapping voices, several instruments (the same pitches on several of them
    at once: few distinct pitches), drums, velocities, tempos and pedal."""
    return codec.encode(random_score(seed, n_notes=160, n_programs=3, drums=True, pitches=(55, 67))).astype(np.int64)


def _notes_by_index(toks: np.ndarray) -> list[tuple]:
    """Every note of a grammatical stream as (pitch, on index, off index, on step, off step, vbin, family),
    walked here independently of aurl.grammar (a note is (instrument in force, pitch); 16 = the drum kit)."""
    step, vb, fam, open_, out = 0, vocab.DEFAULT_VELOCITY_BIN, vocab.DEFAULT_FAMILY, {}, []
    for i, t in enumerate(toks.tolist()):
        kind = vocab.token_kind(t)
        if kind == "note_on":
            open_[(fam, t - vocab.NOTE_ON_OFFSET)] = (i, step, vb)
        elif kind == "note_off":
            j, s, v = open_.pop((fam, t - vocab.NOTE_OFF_OFFSET))
            out.append((t - vocab.NOTE_OFF_OFFSET + vocab.MIN_PITCH, j, i, s, step, v, fam))
        elif kind == "time_shift":
            step += int(vocab.shift_steps([t])[0])
        elif kind == "velocity":
            vb = t - vocab.VELOCITY_OFFSET
        elif kind == "instrument":
            fam = t - vocab.INSTRUMENT_OFFSET
        elif kind == "drum_kit":
            fam = 16
    assert not open_
    return out


def _expected_window_notes(notes, s: int, e: int, t0: int, t1: int) -> list[tuple]:
    """The piece's notes over tokens [s, e), clipped to the span's steps [t0, t1] as decode reports them
    (a note still sounding at the window's end is closed there; every note lasts at least one step)."""
    out = []
    for p, on, off, s_step, e_step, v, f in notes:
        if on < e and off >= s:
            start = max(s_step, t0) - t0
            end = (e_step if off < e else t1) - t0
            out.append((p, start, max(end, start + 1), v, f))
    return sorted(out)


def _decoded(tokens) -> list[tuple]:
    sc = codec.decode(tokens)
    steps = lambda x: np.rint(np.asarray(x) * vocab.STEPS_PER_SECOND).astype(int).tolist()  # noqa: E731
    fam = np.where(sc.is_drum, 16, vocab.instrument_family(sc.program))
    return sorted(zip(sc.pitch.tolist(), steps(sc.start), steps(sc.end),
                      vocab.velocity_bin(sc.velocity).tolist(), fam.tolist(), strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_state_at_equals_the_token_walker(seed):
    toks = _piece(seed)
    compared = 0
    for pos in range(0, len(toks) + 1, 5):
        w = grammar.Walker()
        for t in toks[:pos].tolist():
            w.feed(t)
        assert grammar.state_at(toks, pos) == w.state, pos
        compared += 1
    assert compared > 50


@pytest.mark.parametrize("seed", [0, 1])
def test_the_per_piece_index_gives_the_same_state_everywhere(seed):
    """PieceStates (what the loader uses) equals state_at at every position, also on a stream cut short with
    notes still open."""
    toks = _piece(seed)
    compared = 0
    for stream in (toks, toks[:150]):
        index = grammar.PieceStates(stream)
        for pos in range(len(stream) + 1):
            assert index.state(pos) == grammar.state_at(stream, pos), pos
            compared += 1
    assert compared > 300


@pytest.mark.parametrize("seed", [0, 3])
def test_a_window_cut_anywhere_decodes_to_the_piece_over_its_span(seed):
    toks = _piece(seed)
    notes = _notes_by_index(toks)
    clock = np.concatenate([[0], np.cumsum(vocab.shift_steps(toks))])  # clock before token i
    compared = windows = 0
    for s in range(2, len(toks) - 1, 3):
        e = min(len(toks), s + 60)
        prefix = grammar.state_prefix(grammar.state_at(toks, s))
        window = np.concatenate([prefix, toks[s:e]])
        errors = grammar.grammar_errors(window)
        assert errors["note_off_without_on"] == errors["duplicate_note_on"] == errors["special_inside"] == 0, s
        want = _expected_window_notes(notes, s, e, int(clock[s]), int(clock[e]))
        assert _decoded(window) == want, s
        compared += len(want)
        windows += 1
    assert windows > 100 and compared > 1000


def test_the_prefix_restates_tempo_pedal_instrument_and_velocity():
    toks = _piece(4)
    kinds_seen = set()
    for s in range(2, len(toks), 11):
        st = grammar.state_at(toks, s)
        prefix = grammar.state_prefix(st).astype(np.int64)
        kinds = [vocab.token_kind(t) for t in prefix.tolist()]
        assert kinds[0] == "tempo" and prefix[0] == vocab.TEMPO_OFFSET + st.tempo
        assert (vocab.SUSTAIN_ON_ID in prefix.tolist()) == st.sustain
        assert kinds.count("note_on") == len(st.sounding)
        # decoding the prefix alone leaves the stream in the same state (instrument, velocity in force)
        w = grammar.Walker()
        for t in prefix.tolist():
            w.feed(t)
        assert (w.state.tempo, w.state.sustain, w.state.family, w.state.vbin) == (st.tempo, st.sustain, st.family,
                                                                                  st.vbin)
        assert set(w.state.sounding) == set(st.sounding)
        kinds_seen |= set(kinds)
    assert {"tempo", "sustain", "note_on", "instrument", "velocity"} <= kinds_seen


def _grammar_errors_reference(body: list[int]) -> dict[str, int]:
    """grammar.grammar_errors' rules on an unframed body, written out with a plain set of (family, NOTE_ON id)."""
    errors = dict.fromkeys(("note_off_without_on", "duplicate_note_on", "unclosed_notes", "special_inside",
                            "out_of_vocab"), 0)
    sounding: set[tuple[int, int]] = set()
    fam = 0
    for t in body:
        if t < 0 or t >= vocab.VOCAB_SIZE:
            errors["out_of_vocab"] += 1
        elif t < vocab.NOTE_ON_OFFSET:
            errors["special_inside"] += 1
        elif t < vocab.NOTE_OFF_OFFSET:
            errors["duplicate_note_on"] += (fam, t) in sounding
            sounding.add((fam, t))
        elif t < vocab.TIME_SHIFT_OFFSET:
            if (fam, t - vocab.NUM_PITCHES) in sounding:
                sounding.remove((fam, t - vocab.NUM_PITCHES))
            else:
                errors["note_off_without_on"] += 1
        elif t == 691 or t >= 758:  # DRUM_KIT, INSTRUMENT 0..15
            fam = 16 if t == 691 else t - 758
    errors["unclosed_notes"] = len(sounding)
    return errors


def test_grammar_errors_on_the_walker_counts_as_before():
    """grammar.grammar_errors now walks with aurl.grammar.Walker: the same counts on random (mostly broken)
    streams with instrument changes, out-of-vocabulary ids and special tokens included."""
    rng = np.random.default_rng(0)
    compared = 0
    for _ in range(200):
        notes = rng.integers(vocab.NOTE_ON_OFFSET, vocab.NOTE_ON_OFFSET + 12, 40)  # few pitches: many clashes
        body = np.where(rng.random(40) < 0.5, notes, notes + vocab.NUM_PITCHES)
        body[rng.random(40) < 0.1] = rng.choice([691, 758, 759])  # drum kit, piano, chromatic percussion
        body[rng.random(40) < 0.1] = rng.integers(-3, vocab.VOCAB_SIZE + 3, 40)[:1]
        body = [int(t) for t in body if t not in (vocab.START_ID, vocab.END_ID, vocab.PAD_ID)]
        got = grammar.grammar_errors([vocab.START_ID, 700, *body, vocab.END_ID])
        assert got == _grammar_errors_reference([700, *body])
        compared += sum(got.values())
    assert compared > 1000


def _random_stream(seed: int, length: int) -> np.ndarray:
    """Mostly broken streams: few pitches (clashes), instrument and drum-kit changes, shifts, a few others."""
    rng = np.random.default_rng(seed)
    pitch = rng.integers(0, 6, length)
    choice = rng.random(length)
    return np.select(
        [choice < 0.35, choice < 0.7, choice < 0.8, choice < 0.9],
        [vocab.NOTE_ON_OFFSET + pitch, vocab.NOTE_OFF_OFFSET + pitch, rng.choice([691, 758, 763], length),
         vocab.TIME_SHIFT_OFFSET + pitch],
        rng.integers(0, vocab.VOCAB_SIZE, length))


def test_the_samplers_tensor_state_and_mask_follow_the_walker():
    """aurl.model.sampling keeps the walker's state as tensors: _track token by token and _grammar_state over a
    whole row equal the Walker's (instrument, pitch) sounding set and instrument in force after every token;
    the mask forbids exactly the NOTE_ON / NOTE_OFF the walker would not take as "on" / "off", and END while
    a note sounds."""
    import copy

    import torch

    from aurl.model.sampling import _grammar_state, _mask_ungrammatical, _track

    rows = [_random_stream(s, 300) for s in range(3)]
    ids = torch.from_numpy(np.stack(rows))
    state = _grammar_state(ids[:, :0])
    walkers = [grammar.Walker() for _ in rows]
    notes = list(range(vocab.NOTE_ON_OFFSET, vocab.TIME_SHIFT_OFFSET))
    compared = masked = 0
    for t in range(ids.shape[1]):
        _track(state, ids[:, t])
        for b, w in enumerate(walkers):
            w.feed(int(ids[b, t]))
            want = torch.zeros(vocab.NUM_FAMILIES, vocab.NUM_PITCHES, dtype=torch.bool)
            for f, p in w.state.sounding:
                want[f, p - vocab.MIN_PITCH] = True
            assert torch.equal(state[0][b], want) and int(state[1][b]) == w.family, (b, t)
            compared += 1
        if t % 10 == 9:
            whole = _grammar_state(ids[:, : t + 1])
            assert torch.equal(whole[0], state[0]) and torch.equal(whole[1], state[1]), t
            logits = torch.zeros(len(rows), vocab.VOCAB_SIZE)
            _mask_ungrammatical(logits, state)
            for b, w in enumerate(walkers):
                legal = [grammar.Walker(copy.deepcopy(w.state)).feed(n) in ("on", "off") for n in notes]
                assert (logits[b, notes] == 0).tolist() == legal, (b, t)
                assert bool(logits[b, vocab.END_ID] == 0) == (not w.state.sounding)
                masked += legal.count(False)
    assert compared == 900 and masked > 1000


@pytest.mark.parametrize("seed", range(3))
def test_finalize_keeps_decodes_notes_and_closes_them_on_their_instrument(seed):
    """sampling.finalize walks with the same walker: its output is grammatical and decodes to the very notes of
    the raw row, also when the row is cut off with notes open on several instruments and the drum kit."""
    from aurl.model.sampling import finalize

    row = _random_stream(seed, 400)
    fin = finalize([vocab.START_ID, *row.tolist()])
    assert sum(grammar.grammar_errors(fin).values()) == 0
    end = row.tolist().index(vocab.END_ID) if vocab.END_ID in row.tolist() else len(row)
    want = _decoded(row[:end])  # finalize stops at the first END
    assert _decoded(fin) == want and len(want) > 30
    open_at_end = grammar.Walker()
    for t in row[:end].tolist():
        open_at_end.feed(t)
    assert len({f for f, _ in open_at_end.state.sounding}) >= 2  # the closing needs instrument changes
