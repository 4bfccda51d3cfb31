"""Score <-> tokens: encode (aurl.score.Score -> int16 tokens) and decode (any tokens -> a valid Score), over
the vocabulary of aurl/vocab.py (what each id means; the note scope is (instrument in force, pitch)).

Encoding rules (why, not just what):
- Time is quantized against the absolute grid: every onset and offset is rounded to the nearest 1/64 s
  from the start of the piece, then the gaps between grid positions are written as shifts. Rounding gap
  by gap would let the error drift; this way no event is ever more than half a step off. A gap longer
  than 511 steps is written as several shifts (never truncated).
- Notes outside 21..108 are dropped and counted (``EncodeStats.out_of_range``, drums included), never
  clamped: clamping piles notes up at the edges of the keyboard.
- Drums are kept under the drum kit (``EncodeStats.drums_kept``); their program is not stored (a kit is a
  kit) and they decode to one drum track (is_drum, channel 10). Metrics do not count them as harmony.
- At most one note per (instrument, pitch) may sound at a time. Overlaps within one instrument family (two
  tracks of one family in unison, or a track re-striking a held pitch) are resolved deterministically:
  notes are ordered by (onset, longer first, lower program); a second onset at the same grid step is dropped
  (``merged``), and a note still sounding when the same pitch of its family starts again ends there
  (``truncated``). A note shorter than one step lasts one step.
- At one grid position the order is: tempo, sustain, then for each instrument (by family, the kit last) its
  note-offs (by pitch) and then its note-ons (by pitch); INSTRUMENT / DRUM_KIT precedes the first of them
  when the instrument changes, VELOCITY precedes a note-on when the velocity changes. Tempo is always
  written once at time 0 (120 BPM if the file has none). A piece with one instrument family (the Bach
  chorales) tokenizes exactly as in version 1 but for gaps of 512 steps or more.
- encode(decode(encode(x))) == encode(x): decode places every event exactly on the grid and maps every
  bin to a representative value that falls back into the same bin.
- decode accepts ANY sequence (the one grammar walker, aurl.grammar.Walker, applies these rules): special
  tokens are skipped, a NOTE_OFF without an open note (of that instrument) is ignored, a NOTE_ON of an
  (instrument, pitch) already sounding closes the old note first (a duplicate at the same step is
  ignored), notes still open at the end are closed there, and every note lasts at least one step.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aurl.grammar import Walker
from aurl.score import Score
from aurl.vocab import (
    DEFAULT_BPM,
    DRUM_FAMILY,
    DRUM_KIT_ID,
    END_ID,
    INSTRUMENT_OFFSET,
    MAX_PITCH,
    MIN_PITCH,
    NOTE_OFF_OFFSET,
    NOTE_ON_OFFSET,
    NUM_FAMILIES,
    NUM_PITCHES,
    START_ID,
    STEP_SECONDS,
    STEPS_PER_SECOND,
    SUSTAIN_OFF_ID,
    SUSTAIN_ON_ID,
    TEMPO_OFFSET,
    VELOCITY_OFFSET,
    assemble,
    instrument_family,
    program_of_family,
    tempo_bin,
    tempo_of_bin,
    velocity_bin,
    velocity_of_bin,
)


# ----------------------------------------------------------------------------------------------------------
# Encoding
@dataclass
class EncodeStats:
    """What encode() kept, and what it had to leave out or change: counted so that every loss is reported.

    notes_in = kept + merged + out_of_range; drums_kept is the part of kept under the drum kit.
    """

    notes_in: int = 0
    kept: int = 0
    drums_kept: int = 0
    merged: int = 0
    truncated: int = 0
    out_of_range: int = 0


def _same_as_prev(a: np.ndarray) -> np.ndarray:
    out = np.zeros(len(a), dtype=bool)
    out[1:] = a[1:] == a[:-1]
    return out


def _same_as_next(a: np.ndarray) -> np.ndarray:
    out = np.zeros(len(a), dtype=bool)
    out[:-1] = a[1:] == a[:-1]
    return out


def encode(score, stats: EncodeStats | None = None) -> np.ndarray:
    """Score (aurl.score.Score) -> int16 tokens ``START ... END``. See the module docstring."""
    st = stats if stats is not None else EncodeStats()
    pitch = np.asarray(score.pitch, dtype=np.int64)
    st.notes_in += len(pitch)
    keep = (pitch >= MIN_PITCH) & (pitch <= MAX_PITCH)
    st.out_of_range += int((~keep).sum())
    pitch = pitch[keep]
    qs = np.rint(np.asarray(score.start, dtype=np.float64)[keep] * STEPS_PER_SECOND).astype(np.int64)
    qe = np.rint(np.asarray(score.end, dtype=np.float64)[keep] * STEPS_PER_SECOND).astype(np.int64)
    qs = np.maximum(qs, 0)
    qe = np.maximum(qe, qs + 1)
    vel = np.clip(np.asarray(score.velocity, dtype=np.int64)[keep], 1, 127)
    prog = np.clip(np.asarray(score.program, dtype=np.int64)[keep], 0, 127)
    fam = np.where(np.asarray(score.is_drum, dtype=bool)[keep], DRUM_FAMILY, instrument_family(prog))
    scope = fam * NUM_PITCHES + pitch - MIN_PITCH  # what one NOTE_OFF names: (instrument, pitch)

    # same-scope overlaps: order by (scope, onset, longer first, lower program, velocity)
    order = np.lexsort((vel, prog, -(qe - qs), qs, scope))
    dup = _same_as_prev(scope[order]) & _same_as_prev(qs[order])
    st.merged += int(dup.sum())
    order = order[~dup]  # one gather per column (these small arrays cost per numpy call, not per note)
    scope, pitch, qs, qe, vel, fam = scope[order], pitch[order], qs[order], qe[order], vel[order], fam[order]
    next_start = np.append(qs[1:], 0)[: len(qs)]
    cut = _same_as_next(scope) & (qe > next_start)
    st.truncated += int(cut.sum())
    qe = np.where(cut, next_start, qe)
    st.kept += len(pitch)
    st.drums_kept += int((fam == DRUM_FAMILY).sum())

    # ---- events (step, key, token); at one step the keys order tempo (0), sustain (1), then the notes
    ev_steps, ev_keys, ev_tokens = [], [], []
    for steps, tokens in (_tempo_events(score), _sustain_events(score)):
        ev_steps.append(steps)
        ev_keys.append(np.full_like(steps, len(ev_keys)))
        ev_tokens.append(tokens)
    n_steps, n_tokens = _note_events(pitch, qs, qe, velocity_bin(vel), fam)
    ev_steps.append(n_steps)
    ev_keys.append(2 + np.arange(len(n_steps)))  # already in order: a unique rank keeps it
    ev_tokens.append(n_tokens)

    steps = np.concatenate(ev_steps)
    keys = np.concatenate(ev_keys)
    toks = np.concatenate(ev_tokens)
    o = np.argsort(steps * (len(keys) + 2) + keys)  # by step, then key: one int64 key, all distinct
    body = assemble(toks[o], steps[o])
    return np.concatenate([[START_ID], body, [END_ID]]).astype(np.int16)


def _note_events(pitch, qs, qe, vbin, fam) -> tuple[np.ndarray, np.ndarray]:
    """(step, token) of every note event in stream order: by (step, family, offs before ons, pitch), with
    INSTRUMENT / DRUM_KIT where the family changes and VELOCITY before a note-on where the velocity changes."""
    # one int64 sort key per event (offs, then ons), decoded back by division: fewer numpy calls than
    # gathering five columns, and these arrays are small (the cost is per call)
    fp = fam * (2 * NUM_PITCHES) + pitch - MIN_PITCH
    key = np.concatenate([qe * (2 * NUM_PITCHES * NUM_FAMILIES) + fp, qs * (2 * NUM_PITCHES * NUM_FAMILIES) + fp
                          + NUM_PITCHES])
    o = np.argsort(key)
    key = key[o]
    step, rest = np.divmod(key, 2 * NUM_PITCHES * NUM_FAMILIES)
    f, rest = np.divmod(rest, 2 * NUM_PITCHES)
    is_on = rest >= NUM_PITCHES
    vb = np.concatenate([vbin, vbin])[o]
    fam_change = ~_same_as_prev(f)
    on_idx = np.flatnonzero(is_on)
    vel_change = np.zeros(len(step), dtype=bool)
    vel_change[on_idx] = ~_same_as_prev(vb[on_idx])
    # rest = pitch index for an off, 88 + pitch index for an on
    note_tok = np.where(is_on, NOTE_ON_OFFSET - NUM_PITCHES, NOTE_OFF_OFFSET) + rest
    fam_tok = np.where(f == DRUM_FAMILY, DRUM_KIT_ID, INSTRUMENT_OFFSET + f)
    # each event becomes [family token?, velocity token?, note token]: lay the three columns out and keep
    grid = np.stack([fam_tok, VELOCITY_OFFSET + vb, note_tok], axis=1)
    used = np.stack([fam_change, vel_change, np.ones(len(step), dtype=bool)], axis=1)
    return np.repeat(step, used.sum(1)), grid[used]


def _tempo_events(score) -> tuple[np.ndarray, np.ndarray]:
    """The tempo bin in force at each grid step: written at 0 and on every change."""
    t_time = np.asarray(score.tempo_time, dtype=np.float64)
    t_bpm = np.asarray(score.tempo_bpm, dtype=np.float64)
    if len(t_time) == 0 or np.rint(t_time.min() * STEPS_PER_SECOND) > 0:
        t_time = np.r_[0.0, t_time]
        t_bpm = np.r_[DEFAULT_BPM, t_bpm]  # MIDI's default until the first tempo event
    t_step = np.maximum(np.rint(t_time * STEPS_PER_SECOND).astype(np.int64), 0)
    o = np.argsort(t_step, kind="stable")
    t_step, t_bin = t_step[o], tempo_bin(t_bpm[o])
    last_at_step = ~_same_as_next(t_step)
    t_step, t_bin = t_step[last_at_step], t_bin[last_at_step]
    changed = ~_same_as_prev(t_bin)
    return t_step[changed], TEMPO_OFFSET + t_bin[changed]


def _sustain_events(score) -> tuple[np.ndarray, np.ndarray]:
    """The pedal's last state at each grid step, only changes (the pedal starts up)."""
    s_time = np.asarray(score.sustain_time, dtype=np.float64)
    s_on = np.asarray(score.sustain_on, dtype=bool)
    s_step = np.maximum(np.rint(s_time * STEPS_PER_SECOND).astype(np.int64), 0)
    o = np.argsort(s_step, kind="stable")
    s_step, s_on = s_step[o], s_on[o]
    last_at_step = ~_same_as_next(s_step)
    s_step, s_on = s_step[last_at_step], s_on[last_at_step]
    changed = s_on != np.append(False, s_on[:-1])[: len(s_on)]
    return s_step[changed], np.where(s_on[changed], SUSTAIN_ON_ID, SUSTAIN_OFF_ID)


# ----------------------------------------------------------------------------------------------------------
# Decoding
def decode(tokens):
    """Any token sequence -> a valid Score (see the module docstring for the rules)."""
    walker = Walker(collect=True)  # the one grammar walker decides what each token does
    tempos: dict[int, int] = {}
    sustain: list[tuple[int, bool]] = []
    for t in np.asarray(tokens).astype(np.int64).ravel().tolist():
        what = walker.feed(t)
        if what == "tempo":
            tempos[walker.state.step] = walker.state.tempo
        elif what == "sustain":
            sustain.append((walker.state.step, walker.state.sustain))
    walker.close_all()

    notes = sorted(walker.notes, key=lambda n: (n[2], n[1], n[0]))  # (family, pitch, start, end, vbin)
    arr = np.array(notes, dtype=np.int64).reshape(-1, 5)
    t_steps = np.array(sorted(tempos), dtype=np.int64)
    return Score(
        pitch=arr[:, 1],
        start=arr[:, 2] * STEP_SECONDS,
        end=arr[:, 3] * STEP_SECONDS,
        velocity=velocity_of_bin(arr[:, 4]),
        program=program_of_family(arr[:, 0]),
        is_drum=arr[:, 0] == DRUM_FAMILY,
        tempo_time=t_steps * STEP_SECONDS,
        tempo_bpm=tempo_of_bin(np.array([tempos[s] for s in t_steps.tolist()], dtype=np.int64)),
        sustain_time=np.array([s for s, _ in sustain], dtype=np.int64) * STEP_SECONDS,
        sustain_on=np.array([on for _, on in sustain], dtype=bool),
    )
