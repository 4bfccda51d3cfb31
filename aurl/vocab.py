"""The event vocabulary: the single source of truth for token ids (nothing else hard-codes an id).

What the ids mean, their value maps, the spec and its hash, and the TIME_SHIFT arithmetic. A Score becomes
tokens and back in aurl/codec.py (encode, decode, the encoding rules); the state in force at any token and
the grammar errors of a sequence are aurl/grammar.py's.

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
"""

from __future__ import annotations

import hashlib
import json

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
# Time shifts (encode writes them; the loader's time augmentations rewrite them)
def assemble(tokens: np.ndarray, steps: np.ndarray) -> np.ndarray:
    """Interleave event tokens (sorted, non-decreasing grid positions ``steps``) with TIME_SHIFT tokens.

    The gap before each new position (from 0 for the first) becomes ceil(gap / 511) shifts (NUM_TIME_SHIFTS: the
    longest is 511 steps since version 2), the last one taking the remainder. Vectorized:
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
