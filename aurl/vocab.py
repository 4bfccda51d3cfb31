"""The event vocabulary: the single source of truth for token ids (nothing else hard-codes an id).

Layout (774 tokens; ``VOCAB_SIZE`` is checked at import):

    ids        count  kind         meaning
    0          1      pad          padding (never a target: the loss mask is False there)
    1          1      start        start of a piece
    2          1      end          end of a piece
    3          1      unk          unknown (never produced by encode; decode skips it)
    4..91      88     note_on      pitch 21..108 (A0..C8) starts, with the current velocity and instrument
    92..179    88     note_off     pitch 21..108 ends
    180..691   512    time_shift   advance the clock by 1..512 steps of 15.625 ms (1/64 s; up to 8 s)
    692..723   32     velocity     velocity bin b covers MIDI velocities 4b..4b+3 (decoded as 4b+2)
    724..725   2      sustain      sustain pedal (CC64) on, off
    726..757   32     tempo        tempo bin, geometric from 30 to 240 BPM (metadata: times are in seconds)
    758..773   16     instrument   General MIDI program family (program // 8; decoded as family * 8)

Encoding rules (why, not just what):
- Time is quantized against the absolute grid: every onset and offset is rounded to the nearest 1/64 s
  from the start of the piece, then the gaps between grid positions are written as shifts. Rounding gap
  by gap would let the error drift; this way no event is ever more than half a step off. A gap longer
  than 512 steps is written as several shifts (never truncated).
- Notes outside 21..108 are dropped and counted (``EncodeStats.out_of_range``), never clamped: clamping
  piles notes up at the edges of the keyboard.
- Drums are dropped and counted (``EncodeStats.drum_notes``): a drum "pitch" names an instrument, not a
  pitch, and the vocabulary has no drum kit; mixing them in as pitched notes would teach false harmony.
- NOTE_OFF names only a pitch, so at most one note per pitch may sound at a time. Overlaps of the same
  pitch (also across instruments) are resolved deterministically: notes are ordered by (onset, longer
  first, lower program); a second onset at the same grid step is dropped (``merged``), and a note still
  sounding when the same pitch starts again ends there (``truncated``). A note shorter than one step
  lasts one step.
- At one grid position the order is: tempo, sustain, note-offs (by pitch), then note-ons ordered by
  (instrument family, pitch), each preceded by INSTRUMENT / VELOCITY only when that state changes.
  Tempo is always written once at time 0 (120 BPM if the file has none).
- encode(decode(encode(x))) == encode(x): decode places every event exactly on the grid and maps every
  bin to a representative value that falls back into the same bin.
- decode accepts ANY sequence: special tokens are skipped, a NOTE_OFF without an open note is ignored,
  a NOTE_ON of a pitch already sounding closes the old note first (a duplicate at the same step is
  ignored), notes still open at the end are closed there, and every note lasts at least one step.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

# ----------------------------------------------------------------------------------------------------------
# Layout
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3
SPECIAL_IDS = frozenset({PAD_ID, START_ID, END_ID, UNK_ID})
NUM_SPECIAL = 4

MIN_PITCH, MAX_PITCH = 21, 108
NUM_PITCHES = MAX_PITCH - MIN_PITCH + 1  # 88
NUM_TIME_SHIFTS = 512
STEPS_PER_SECOND = 64
STEP_SECONDS = 1.0 / STEPS_PER_SECOND  # 15.625 ms, exact in binary floating point
STEP_MS = 1000.0 * STEP_SECONDS
NUM_VELOCITY_BINS = 32
NUM_SUSTAIN = 2
NUM_TEMPO_BINS = 32
TEMPO_MIN_BPM, TEMPO_MAX_BPM = 30.0, 240.0
DEFAULT_BPM = 120.0
NUM_INSTRUMENTS = 16  # General MIDI program families

NOTE_ON_OFFSET = NUM_SPECIAL
NOTE_OFF_OFFSET = NOTE_ON_OFFSET + NUM_PITCHES
TIME_SHIFT_OFFSET = NOTE_OFF_OFFSET + NUM_PITCHES
VELOCITY_OFFSET = TIME_SHIFT_OFFSET + NUM_TIME_SHIFTS
SUSTAIN_OFFSET = VELOCITY_OFFSET + NUM_VELOCITY_BINS
SUSTAIN_ON_ID = SUSTAIN_OFFSET
SUSTAIN_OFF_ID = SUSTAIN_OFFSET + 1
TEMPO_OFFSET = SUSTAIN_OFFSET + NUM_SUSTAIN
INSTRUMENT_OFFSET = TEMPO_OFFSET + NUM_TEMPO_BINS
VOCAB_SIZE = INSTRUMENT_OFFSET + NUM_INSTRUMENTS

assert VOCAB_SIZE == 774, VOCAB_SIZE

# (kind, first id, count) in id order
RANGES: tuple[tuple[str, int, int], ...] = (
    ("pad", PAD_ID, 1),
    ("start", START_ID, 1),
    ("end", END_ID, 1),
    ("unk", UNK_ID, 1),
    ("note_on", NOTE_ON_OFFSET, NUM_PITCHES),
    ("note_off", NOTE_OFF_OFFSET, NUM_PITCHES),
    ("time_shift", TIME_SHIFT_OFFSET, NUM_TIME_SHIFTS),
    ("velocity", VELOCITY_OFFSET, NUM_VELOCITY_BINS),
    ("sustain", SUSTAIN_OFFSET, NUM_SUSTAIN),
    ("tempo", TEMPO_OFFSET, NUM_TEMPO_BINS),
    ("instrument", INSTRUMENT_OFFSET, NUM_INSTRUMENTS),
)
assert sum(n for _, _, n in RANGES) == VOCAB_SIZE
assert all(RANGES[i][1] + RANGES[i][2] == RANGES[i + 1][1] for i in range(len(RANGES) - 1))

# token id -> kind index into RANGES, for vectorized checks
KIND_NAMES = tuple(name for name, _, _ in RANGES)
KIND_OF_ID = np.concatenate([np.full(n, i, dtype=np.int8) for i, (_, _, n) in enumerate(RANGES)])


def token_kind(token_id: int) -> str:
    """The kind of one token id ("note_on", "time_shift", ...); ValueError outside the vocabulary."""
    if not 0 <= int(token_id) < VOCAB_SIZE:
        raise ValueError(f"token id {token_id} outside the vocabulary [0, {VOCAB_SIZE})")
    return KIND_NAMES[KIND_OF_ID[int(token_id)]]


# ----------------------------------------------------------------------------------------------------------
# Value <-> bin maps (each representative value falls back into its own bin)
def note_on_id(pitch: int) -> int:
    assert MIN_PITCH <= pitch <= MAX_PITCH, pitch
    return NOTE_ON_OFFSET + pitch - MIN_PITCH


def note_off_id(pitch: int) -> int:
    assert MIN_PITCH <= pitch <= MAX_PITCH, pitch
    return NOTE_OFF_OFFSET + pitch - MIN_PITCH


def time_shift_id(steps: int) -> int:
    assert 1 <= steps <= NUM_TIME_SHIFTS, steps
    return TIME_SHIFT_OFFSET + steps - 1


def velocity_bin(velocity):
    """MIDI velocity 0..127 -> bin 0..31 (works on scalars and arrays)."""
    return np.minimum(np.asarray(velocity) // 4, NUM_VELOCITY_BINS - 1)


def velocity_of_bin(b):
    return np.asarray(b) * 4 + 2


_TEMPO_LOG_RATIO = np.log(TEMPO_MAX_BPM / TEMPO_MIN_BPM)


def tempo_bin(bpm):
    """BPM -> bin 0..31 (geometric spacing; tempos outside 30..240 go to the end bins)."""
    x = np.log(np.maximum(np.asarray(bpm, dtype=np.float64), 1e-6) / TEMPO_MIN_BPM) / _TEMPO_LOG_RATIO
    return np.clip(np.rint(x * (NUM_TEMPO_BINS - 1)), 0, NUM_TEMPO_BINS - 1).astype(np.int64)


def tempo_of_bin(b):
    return TEMPO_MIN_BPM * np.exp(np.asarray(b, dtype=np.float64) / (NUM_TEMPO_BINS - 1) * _TEMPO_LOG_RATIO)


def instrument_family(program):
    return np.asarray(program) // 8


def program_of_family(family):
    return np.asarray(family) * 8


DEFAULT_VELOCITY_BIN = int(velocity_bin(64))  # state before any VELOCITY token (malformed input only)
DEFAULT_FAMILY = 0  # acoustic piano, state before any INSTRUMENT token


# ----------------------------------------------------------------------------------------------------------
# Spec and hash
def vocab_spec() -> dict:
    """A JSON-able description of the vocabulary; checkpoints and caches store it (and its hash)."""
    return {
        "version": 1,
        "vocab_size": VOCAB_SIZE,
        "ranges": [{"kind": k, "offset": o, "count": n} for k, o, n in RANGES],
        "pitch_range": [MIN_PITCH, MAX_PITCH],
        "time_step_ms": STEP_MS,
        "max_shift_steps": NUM_TIME_SHIFTS,
        "velocity": "bin = min(v // 4, 31); decoded 4 * bin + 2",
        "tempo_bpm": [TEMPO_MIN_BPM, TEMPO_MAX_BPM, "geometric"],
        "instrument": "GM program family = program // 8; drums dropped",
        "piece_framing": "START ... END",
    }


def vocab_hash() -> str:
    """sha256 of the canonical JSON of vocab_spec()."""
    canonical = json.dumps(vocab_spec(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------------
# Encoding
@dataclass
class EncodeStats:
    """What encode() had to leave out or change; counted so that every loss is reported."""

    notes_in: int = 0
    notes_out: int = 0
    out_of_range: int = 0
    drum_notes: int = 0
    merged: int = 0
    truncated: int = 0


def assemble(tokens: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Interleave event tokens (sorted, non-decreasing grid positions ``steps``) with TIME_SHIFT tokens.

    The gap before each new position (from 0 for the first) becomes ceil(gap / 512) shifts. Vectorized:
    the loader's time augmentations call this per window.
    """
    tokens = np.asarray(tokens)
    steps = np.asarray(steps, dtype=np.int64)
    if len(tokens) == 0:
        return tokens.astype(np.int16)
    gaps = np.diff(steps, prepend=0)
    assert gaps.min() >= 0, "event steps must be non-decreasing and >= 0"
    n_shift = -(-gaps // NUM_TIME_SHIFTS)  # ceil
    total_shift = int(n_shift.sum())
    if total_shift == 0:
        return tokens.astype(np.int16)
    cum = np.cumsum(n_shift)
    pos_ev = np.arange(len(tokens)) + cum
    out = np.empty(len(tokens) + total_shift, dtype=np.int16)
    is_shift = np.ones(len(out), dtype=bool)
    is_shift[pos_ev] = False
    out[pos_ev] = tokens
    vals = np.full(total_shift, NUM_TIME_SHIFTS, dtype=np.int64)
    has = n_shift > 0
    vals[cum[has] - 1] = gaps[has] - NUM_TIME_SHIFTS * (n_shift[has] - 1)
    out[is_shift] = TIME_SHIFT_OFFSET + vals - 1
    return out


def shift_steps(tokens: np.ndarray) -> np.ndarray:
    """Steps each token advances the clock by (0 for all but TIME_SHIFT)."""
    t = np.asarray(tokens).astype(np.int64)
    is_shift = (t >= TIME_SHIFT_OFFSET) & (t < TIME_SHIFT_OFFSET + NUM_TIME_SHIFTS)
    return np.where(is_shift, t - TIME_SHIFT_OFFSET + 1, 0)


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
    drum = np.asarray(score.is_drum, dtype=bool)
    in_range = (pitch >= MIN_PITCH) & (pitch <= MAX_PITCH)
    st.drum_notes += int(drum.sum())
    st.out_of_range += int((~drum & ~in_range).sum())
    keep = ~drum & in_range
    pitch = pitch[keep]
    qs = np.rint(np.asarray(score.start, dtype=np.float64)[keep] * STEPS_PER_SECOND).astype(np.int64)
    qe = np.rint(np.asarray(score.end, dtype=np.float64)[keep] * STEPS_PER_SECOND).astype(np.int64)
    qs = np.maximum(qs, 0)
    qe = np.maximum(qe, qs + 1)
    vel = np.clip(np.asarray(score.velocity, dtype=np.int64)[keep], 1, 127)
    fam = instrument_family(np.clip(np.asarray(score.program, dtype=np.int64)[keep], 0, 127))
    prog = np.asarray(score.program, dtype=np.int64)[keep]

    # same-pitch overlaps: order by (pitch, onset, longer first, lower program, velocity)
    order = np.lexsort((vel, prog, -(qe - qs), qs, pitch))
    pitch, qs, qe, vel, fam = pitch[order], qs[order], qe[order], vel[order], fam[order]
    dup = _same_as_prev(pitch) & _same_as_prev(qs)
    st.merged += int(dup.sum())
    keep = ~dup
    pitch, qs, qe, vel, fam = pitch[keep], qs[keep], qe[keep], vel[keep], fam[keep]
    next_same = _same_as_next(pitch)
    next_start = np.append(qs[1:], 0)[: len(qs)]
    cut = next_same & (qe > next_start)
    st.truncated += int(cut.sum())
    qe = np.where(cut, next_start, qe)
    st.notes_out += len(pitch)

    # ---- events: (step, order, sub-order..., token)
    ev_steps, ev_keys, ev_tokens = [], [], []

    # tempo: the bin in force at each grid step; written at 0 and on every change
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
    t_step, t_bin = t_step[changed], t_bin[changed]
    ev_steps.append(t_step)
    ev_keys.append(np.zeros_like(t_step))
    ev_tokens.append(TEMPO_OFFSET + t_bin)

    # sustain: last state at each grid step, only changes (the pedal starts up)
    s_time = np.asarray(score.sustain_time, dtype=np.float64)
    s_on = np.asarray(score.sustain_on, dtype=bool)
    if len(s_time):
        s_step = np.maximum(np.rint(s_time * STEPS_PER_SECOND).astype(np.int64), 0)
        o = np.argsort(s_step, kind="stable")
        s_step, s_on = s_step[o], s_on[o]
        last_at_step = ~_same_as_next(s_step)
        s_step, s_on = s_step[last_at_step], s_on[last_at_step]
        changed = s_on != np.append(False, s_on[:-1])[: len(s_on)]
        s_step, s_on = s_step[changed], s_on[changed]
        ev_steps.append(s_step)
        ev_keys.append(np.ones_like(s_step))
        ev_tokens.append(np.where(s_on, SUSTAIN_ON_ID, SUSTAIN_OFF_ID))

    # note-offs, by pitch
    ev_steps.append(qe)
    ev_keys.append(np.full_like(qe, 2) * 1000 + pitch)
    ev_tokens.append(NOTE_OFF_OFFSET + pitch - MIN_PITCH)

    # note-ons by (step, family, pitch), with INSTRUMENT / VELOCITY on state changes
    o = np.lexsort((pitch, fam, qs))
    on_step, on_fam, on_pitch, on_vbin = qs[o], fam[o], pitch[o], velocity_bin(vel[o])
    fam_change = ~_same_as_prev(on_fam)
    vel_change = ~_same_as_prev(on_vbin)
    # sub-order inside one note-on: instrument (0), velocity (1), note (2); a unique rank keeps them together
    rank = np.arange(len(on_step)) * 3
    base = 3 * 1000 * 1000 + 0  # after tempo (0), sustain (1), offs (2*1000+pitch)
    ev_steps += [on_step[fam_change], on_step[vel_change], on_step]
    ev_keys += [base + rank[fam_change], base + rank[vel_change] + 1, base + rank + 2]
    ev_tokens += [
        INSTRUMENT_OFFSET + on_fam[fam_change],
        VELOCITY_OFFSET + on_vbin[vel_change],
        NOTE_ON_OFFSET + on_pitch - MIN_PITCH,
    ]

    steps = np.concatenate(ev_steps)
    keys = np.concatenate(ev_keys)
    toks = np.concatenate(ev_tokens)
    o = np.lexsort((keys, steps))
    body = assemble(toks[o], steps[o])
    return np.concatenate([[START_ID], body, [END_ID]]).astype(np.int16)


# ----------------------------------------------------------------------------------------------------------
# Decoding
def decode(tokens):
    """Any token sequence -> a valid Score (see the module docstring for the rules)."""
    from aurl.score import Score

    toks = np.asarray(tokens).astype(np.int64).ravel().tolist()
    step = 0
    vbin = DEFAULT_VELOCITY_BIN
    fam = DEFAULT_FAMILY
    open_notes: dict[int, tuple[int, int, int]] = {}  # pitch -> (start step, velocity bin, family)
    notes: list[tuple[int, int, int, int, int]] = []  # pitch, start, end, vbin, family
    tempos: dict[int, int] = {}
    sustain: list[tuple[int, bool]] = []

    def close(p: int, at: int) -> None:
        s, vb, f = open_notes.pop(p)
        notes.append((p, s, max(at, s + 1), vb, f))

    for t in toks:
        if t < NOTE_ON_OFFSET or t >= VOCAB_SIZE:
            continue  # special tokens (and ids outside the vocabulary) are skipped
        if t < NOTE_OFF_OFFSET:
            p = t - NOTE_ON_OFFSET + MIN_PITCH
            if p in open_notes:
                if open_notes[p][0] == step:
                    continue  # duplicate onset at the same step
                close(p, step)
            open_notes[p] = (step, vbin, fam)
        elif t < TIME_SHIFT_OFFSET:
            p = t - NOTE_OFF_OFFSET + MIN_PITCH
            if p in open_notes:
                close(p, step)
        elif t < VELOCITY_OFFSET:
            step += t - TIME_SHIFT_OFFSET + 1
        elif t < SUSTAIN_OFFSET:
            vbin = t - VELOCITY_OFFSET
        elif t < TEMPO_OFFSET:
            sustain.append((step, t == SUSTAIN_ON_ID))
        elif t < INSTRUMENT_OFFSET:
            tempos[step] = t - TEMPO_OFFSET
        else:
            fam = t - INSTRUMENT_OFFSET
    for p in sorted(open_notes):
        close(p, step)

    notes.sort(key=lambda n: (n[1], n[0]))
    arr = np.array(notes, dtype=np.int64).reshape(-1, 5)
    t_steps = np.array(sorted(tempos), dtype=np.int64)
    return Score(
        pitch=arr[:, 0],
        start=arr[:, 1] * STEP_SECONDS,
        end=arr[:, 2] * STEP_SECONDS,
        velocity=velocity_of_bin(arr[:, 3]),
        program=program_of_family(arr[:, 4]),
        is_drum=np.zeros(len(arr), dtype=bool),
        tempo_time=t_steps * STEP_SECONDS,
        tempo_bpm=tempo_of_bin(np.array([tempos[s] for s in t_steps.tolist()], dtype=np.int64)),
        sustain_time=np.array([s for s, _ in sustain], dtype=np.int64) * STEP_SECONDS,
        sustain_on=np.array([on for _, on in sustain], dtype=bool),
    )


# ----------------------------------------------------------------------------------------------------------
# Grammar check (evaluation of generated sequences)
def grammar_errors(tokens) -> dict[str, int]:
    """Counts of grammar violations in a token sequence (all zero for anything encode() produced).

    note_off_without_on: NOTE_OFF of a pitch not sounding; duplicate_note_on: NOTE_ON of a pitch already
    sounding; unclosed_notes: notes still open at the end; special_inside: START/END/PAD/UNK anywhere but
    a leading START, a trailing END and trailing PADs; out_of_vocab: ids outside [0, VOCAB_SIZE).
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
    while hi > lo and toks[hi - 1] == PAD_ID:
        hi -= 1
    if hi > lo and toks[hi - 1] == END_ID:
        hi -= 1
    if hi > lo and toks[lo] == START_ID:
        lo += 1
    from aurl.grammar import Walker  # local: aurl.grammar imports this module

    walker = Walker()  # the one grammar walker (aurl.grammar) decides what each token does
    counted = {"out_of_vocab": "out_of_vocab", "special": "special_inside", "on_again": "duplicate_note_on",
               "off_silent": "note_off_without_on"}
    for t in toks[lo:hi]:
        what = counted.get(walker.feed(t))
        if what is not None:
            errors[what] += 1
    errors["unclosed_notes"] = len(walker.state.sounding)
    return errors
