"""The event vocabulary: the single source of truth for token ids (nothing else hard-codes an id).

Layout (774 tokens; ``VOCAB_SIZE`` is checked at import):

    ids        count  kind         meaning
    0          1      pad          padding (never a target: the loss mask is False there)
    1          1      start        start of a piece
    2          1      end          end of a piece
    3          1      unk          unknown (never produced by encode; decode skips it)
    4..91      88     note_on      pitch 21..108 (A0..C8) of the instrument in force starts, with the velocity
                                   in force (under the drum kit: GM drum key 21..108, e.g. 36 = bass drum)
    92..179    88     note_off     pitch 21..108 of the instrument in force ends
    180..690   511    time_shift   advance the clock by 1..511 steps of 15.625 ms (1/64 s; up to 7.98 s)
    691        1      drum_kit     the instrument in force is the GM drum kit (MIDI channel 10)
    692..723   32     velocity     velocity bin b covers MIDI velocities 4b..4b+3 (decoded as 4b+2)
    724..725   2      sustain      sustain pedal (CC64) on, off
    726..757   32     tempo        tempo bin, geometric from 30 to 240 BPM (metadata: times are in seconds)
    758..773   16     instrument   General MIDI program family (program // 8; decoded as family * 8)

Why the drum kit took the 512-step shift (version 2; version 1 had 512 shifts and no kit): the budget stays
774 and no musical state is lost. The longest shift drops from 8.000 s to 7.984 s, so a gap of 512 steps or
more costs at most one TIME_SHIFT more (silences that long are rare, and were already several shifts past
8 s); all other ids keep their values. The alternatives each lose something that is played: one of the
16 instrument families (sound effects is the rarest, but it is used), or a velocity or tempo bin (coarser
bins, and every piece's tokens would move). The kit reuses NOTE_ON/NOTE_OFF: a drum "pitch" names a drum
(GM key map), so the 88 note ids cover the GM drum keys 35..81 and more.

Instrument scope (version 2): a note is (instrument, pitch), where the instrument is one of the 16 GM
families or the drum kit (``NUM_FAMILIES`` = 17, ``DRUM_FAMILY`` = 16). NOTE_ON and NOTE_OFF act on the
pitch of the instrument in force, set by the INSTRUMENT or DRUM_KIT token before them (written only when it
changes, before a NOTE_OFF as before a NOTE_ON). The same pitch on two instruments (a piano doubling the
strings) is two notes; in version 1 NOTE_OFF named only a pitch, and one of them was merged or cut.

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
NUM_TIME_SHIFTS = 511  # 512 in version 1: the 512-step shift became DRUM_KIT (see the module docstring)
STEPS_PER_SECOND = 64
STEP_SECONDS = 1.0 / STEPS_PER_SECOND  # 15.625 ms, exact in binary floating point
STEP_MS = 1000.0 * STEP_SECONDS
NUM_VELOCITY_BINS = 32
NUM_SUSTAIN = 2
NUM_TEMPO_BINS = 32
TEMPO_MIN_BPM, TEMPO_MAX_BPM = 30.0, 240.0
DEFAULT_BPM = 120.0
NUM_INSTRUMENTS = 16  # General MIDI program families
DRUM_FAMILY = NUM_INSTRUMENTS  # the drum kit, as a 17th instrument of the note scope
NUM_FAMILIES = NUM_INSTRUMENTS + 1

NOTE_ON_OFFSET = NUM_SPECIAL
NOTE_OFF_OFFSET = NOTE_ON_OFFSET + NUM_PITCHES
TIME_SHIFT_OFFSET = NOTE_OFF_OFFSET + NUM_PITCHES
DRUM_KIT_ID = TIME_SHIFT_OFFSET + NUM_TIME_SHIFTS
VELOCITY_OFFSET = DRUM_KIT_ID + 1
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
    ("drum_kit", DRUM_KIT_ID, 1),
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
    """Program of a scope family (the drum kit: 0 on a drum track)."""
    f = np.asarray(family)
    return np.where(f == DRUM_FAMILY, 0, f * 8)


def family_token(family: int) -> int:
    """The token that puts ``family`` (0..15 a GM family, 16 the drum kit) in force."""
    assert 0 <= family < NUM_FAMILIES, family
    return DRUM_KIT_ID if family == DRUM_FAMILY else INSTRUMENT_OFFSET + family


def family_of_token(tokens):
    """Family each token puts in force (vectorized); -1 for tokens that are not INSTRUMENT / DRUM_KIT."""
    t = np.asarray(tokens).astype(np.int64)
    inst = (t >= INSTRUMENT_OFFSET) & (t < INSTRUMENT_OFFSET + NUM_INSTRUMENTS)
    return np.where(inst, t - INSTRUMENT_OFFSET, np.where(t == DRUM_KIT_ID, DRUM_FAMILY, -1))


DEFAULT_VELOCITY_BIN = int(velocity_bin(64))  # state before any VELOCITY token (malformed input only)
DEFAULT_FAMILY = 0  # acoustic piano, state before any INSTRUMENT token


# ----------------------------------------------------------------------------------------------------------
# Spec and hash
def vocab_spec() -> dict:
    """A JSON-able description of the vocabulary; checkpoints and caches store it (and its hash)."""
    return {
        "version": 2,
        "vocab_size": VOCAB_SIZE,
        "ranges": [{"kind": k, "offset": o, "count": n} for k, o, n in RANGES],
        "pitch_range": [MIN_PITCH, MAX_PITCH],
        "time_step_ms": STEP_MS,
        "max_shift_steps": NUM_TIME_SHIFTS,
        "velocity": "bin = min(v // 4, 31); decoded 4 * bin + 2",
        "tempo_bpm": [TEMPO_MIN_BPM, TEMPO_MAX_BPM, "geometric"],
        "instrument": "GM program family = program // 8; DRUM_KIT = the GM drum kit",
        "note_scope": "(instrument in force, pitch): NOTE_OFF ends the pitch of the instrument in force",
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
    """What encode() kept, and what it had to leave out or change: counted so that every loss is reported.

    notes_in = kept + merged + out_of_range; drums_kept is the part of kept under the drum kit.
    """

    notes_in: int = 0
    kept: int = 0
    drums_kept: int = 0
    merged: int = 0
    truncated: int = 0
    out_of_range: int = 0


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
    from aurl.grammar import Walker  # local: aurl.grammar imports this module
    from aurl.score import Score

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
    while hi > lo and toks[hi - 1] == PAD_ID:
        hi -= 1
    if hi > lo and toks[hi - 1] == END_ID:
        hi -= 1
    if hi > lo and toks[lo] == START_ID:
        lo += 1
    from aurl.grammar import Walker  # local: aurl.grammar imports this module

    walker = Walker()  # the one grammar walker (aurl.grammar) decides what each token does
    counted = {"out_of_vocab": "out_of_vocab", "special": "special_inside", "on_again": "duplicate_note_on",
               "on_dup": "duplicate_note_on", "off_silent": "note_off_without_on"}
    for t in toks[lo:hi]:
        what = counted.get(walker.feed(t))
        if what is not None:
            errors[what] += 1
    errors["unclosed_notes"] = len(walker.state.sounding)
    return errors
