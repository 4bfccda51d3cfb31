"""Token-level augmentation: applied to a cached token window in the loader, never by re-parsing MIDI.

Every transform is vectorized numpy on the window and is drawn from a generator seeded by
(seed, epoch, sample index) (``sample_rng``), so a resumed run sees exactly the same samples.

- transpose: NOTE_ON/NOTE_OFF ids of pitched instruments shift by s semitones; notes under the drum kit never
  move (their number names a drum). When the window's pitched notes would leave 21..108, s is reduced
  toward 0 (the window moves less); no note is ever clamped, so intervals are always kept.
- time stretch, swing, humanize: one monotone warp of the window's grid positions, re-quantized against
  the absolute grid (position from the window start x factor, rounded), never gap by gap; positions that
  were distinct stay distinct (at least one step apart), so note order and note-on/off pairing survive.
  Swing delays the off-beat half of each beat of ``swing_beat_steps``, in phase with the piece's start
  when the caller passes ``start_clock`` (the loader does), else with the window's start. Humanize moves each grid position by up to ±``humanize_steps``.
- velocity scaling: each VELOCITY bin's representative value is scaled and re-binned (clipped to 1..127).
- instrument substitution: INSTRUMENT tokens (GM families) are remapped to another family, either within groups of related
  families (``instrument_mode="group"``: keyboards, guitar+bass, strings+ensemble, brass/reed/pipe,
  synths, other) or to any family (``"any"``). The vocabulary stores families, not programs, so "within a
  family" at the token level means within a group of related families. The remap is a permutation (a
  random cycle through each group, or through all 16): notes are scoped by (instrument, pitch), so two
  families mapped onto one would collide (a NOTE_ON of a sounding note). The drum kit is not a family of
  any group: a pitched part never becomes drums, nor drums a pitched part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from aurl import grammar, vocab

INSTRUMENT_GROUPS: tuple[tuple[int, ...], ...] = (
    (0, 1, 2),  # piano, chromatic percussion, organ
    (3, 4),  # guitar, bass
    (5, 6),  # strings, ensemble
    (7, 8, 9),  # brass, reed, pipe
    (10, 11, 12),  # synth lead, synth pad, synth effects
    (13, 14, 15),  # ethnic, percussive, sound effects
)
_GROUP_OF = {f: g for g in INSTRUMENT_GROUPS for f in g}
TRANSFORMS = ("transpose", "stretch", "velocity", "instrument", "swing", "humanize")  # each has <name>_prob


@dataclass
class AugmentConfig:
    """Ranges and probabilities of the token augmentations (YAML section `augment`; its range checks are
    aurl.config.check_augment_options, where the YAML section is read)."""

    enabled: bool = False
    """Master switch; False = windows exactly as cached."""
    transpose_prob: float = 0.5
    """Probability of transposing a window."""
    transpose_max: int = 6
    """Largest transposition, semitones, up or down (stage 2: 6, stage 3: 8)."""
    stretch_prob: float = 0.5
    """Probability of time-stretching a window."""
    stretch_min: float = 0.85
    """Smallest time factor (<1 = faster)."""
    stretch_max: float = 1.15
    """Largest time factor (>1 = slower)."""
    velocity_prob: float = 0.5
    """Probability of scaling velocities."""
    velocity_min: float = 0.7
    """Smallest velocity factor."""
    velocity_max: float = 1.3
    """Largest velocity factor."""
    instrument_prob: float = 0.2
    """Probability of substituting instruments."""
    instrument_mode: Literal["group", "any"] = "group"
    """"group": within a group of related GM families; "any": any family."""
    swing_prob: float = 0.1
    """Probability of swinging a window."""
    swing_max: float = 0.3
    """Largest swing: the off-beat moves later by this fraction of half a beat."""
    swing_beat_steps: int = 32
    """Beat length for swing, in 15.625 ms steps (32 = a quarter note at 120 BPM)."""
    humanize_prob: float = 0.2
    """Probability of humanizing a window."""
    humanize_steps: int = 1
    """Largest random move of a grid position, in steps."""

    @property
    def warps_time(self) -> bool:
        return self.enabled and (self.stretch_prob > 0 or self.swing_prob > 0 or self.humanize_prob > 0)


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of one sample: a pure function of (seed, epoch, index); stream separates uses
    (0: the window's start, 1: its augmentation) so that one never shifts the other's draws."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(stream)])


_VEL_REP = vocab.velocity_of_bin(np.arange(vocab.NUM_VELOCITY_BINS)).astype(np.float64)
_BINS = np.arange(vocab.NUM_VELOCITY_BINS)
_ON, _OFF, _TS = vocab.NOTE_ON_OFFSET, vocab.NOTE_OFF_OFFSET, vocab.TIME_SHIFT_OFFSET


def augment_tokens(
    tokens: np.ndarray, cfg: AugmentConfig, rng: np.random.Generator, start_clock: Callable[[], int] | None = None,
    lead: int = 0,
) -> tuple[np.ndarray, dict]:
    """Apply cfg to one window; returns (new int16 tokens, the parameters applied).

    start_clock: returns the grid position (steps from the piece start) of the window's first token; only
    called when swing is drawn, to put the swing in phase with the beats.
    lead: leading tokens that restate the state in force (the loader's state prefix): transposed, scaled and
    substituted like the rest, but left out of the time warps, so they stay the first `lead` tokens.

    A transform that is drawn always changes the window when it has something to change: transposition
    never draws 0, a velocity scaling moves every bin at least one step toward its factor, an instrument
    substitution never maps a family to itself. Otherwise the configured probability would overstate the
    variety (a factor close to 1 leaves every bin where it was).

    Every random draw happens in a fixed order whatever the window holds, so the parameters depend only on
    the generator. The output may differ in length from the input by a few TIME_SHIFT tokens.
    """
    params: dict = {}
    if not cfg.enabled:
        return tokens, params
    d = _draw(cfg, rng)
    t = np.asarray(tokens).astype(np.int64)
    if d.u[0] < cfg.transpose_prob and d.transpose != 0:
        t = _transpose(t, d.transpose, params)
    if d.u[1] < cfg.velocity_prob:
        t = _scale_velocity(t, d.vel_factor, params)
    if d.u[2] < cfg.instrument_prob:
        t = _substitute_instruments(t, d.inst_pick, cfg.instrument_mode, params)
    t = _warp_window(t, cfg, d, start_clock, lead, params)
    return t.astype(np.int16), params


@dataclass(frozen=True)
class _Draws:
    """One window's random draws."""

    u: np.ndarray
    """One uniform per transform, against its probability: transpose, velocity, instrument, stretch, swing,
    humanize."""
    transpose: int
    stretch: float
    vel_factor: float
    swing: float
    inst_pick: np.ndarray
    """One uniform per family: the order of the substitution's cycle."""
    hum_seed: int


def _draw(cfg: AugmentConfig, rng: np.random.Generator) -> _Draws:
    """Every draw of one window, in a fixed order and count whatever the window holds or cfg enables."""
    u = rng.random(6)
    transpose = int(rng.integers(-cfg.transpose_max, max(cfg.transpose_max, 1)))
    if transpose >= 0 and cfg.transpose_max > 0:
        transpose += 1  # -max..-1, 1..max: never 0
    stretch = float(rng.uniform(cfg.stretch_min, cfg.stretch_max))
    vel_factor = float(rng.uniform(cfg.velocity_min, cfg.velocity_max))
    swing = float(rng.uniform(0.0, cfg.swing_max))
    inst_pick = rng.random(vocab.NUM_INSTRUMENTS)
    hum_seed = int(rng.integers(0, 2**31))
    return _Draws(u, transpose, stretch, vel_factor, swing, inst_pick, hum_seed)


def _transpose(t: np.ndarray, transpose: int, params: dict) -> np.ndarray:
    """Shift the pitched notes by `transpose`, reduced toward 0 so that none leaves the pitch range."""
    is_note = (t >= _ON) & (t < _TS)
    if is_note.any():
        is_note &= grammar.family_at(t) != vocab.DRUM_FAMILY  # drums never move
    if not is_note.any():
        return t
    pitch = np.where(t < _OFF, t - _ON, t - _OFF)[is_note]  # 0..87
    s = int(np.clip(transpose, -int(pitch.min()), vocab.NUM_PITCHES - 1 - int(pitch.max())))
    if not s:
        return t
    params["transpose"] = s
    return np.where(is_note, t + s, t)


def _scale_velocity(t: np.ndarray, factor: float, params: dict) -> np.ndarray:
    """Re-bin every VELOCITY token's value times `factor`; each bin moves at least one step toward it."""
    is_vel = (t >= vocab.VELOCITY_OFFSET) & (t < vocab.SUSTAIN_OFFSET)
    if not is_vel.any():
        return t
    lut = vocab.velocity_bin(np.clip(np.rint(_VEL_REP * factor), 1, 127).astype(np.int64))
    step = 1 if factor >= 1.0 else -1
    lut = np.where(lut == _BINS, np.clip(_BINS + step, 0, vocab.NUM_VELOCITY_BINS - 1), lut)
    params["velocity"] = round(factor, 4)
    return np.where(is_vel, vocab.VELOCITY_OFFSET + lut[np.where(is_vel, t - vocab.VELOCITY_OFFSET, 0)], t)


def _substitute_instruments(t: np.ndarray, pick: np.ndarray, mode: str, params: dict) -> np.ndarray:
    is_inst = t >= vocab.INSTRUMENT_OFFSET
    if not is_inst.any():
        return t
    lut = _substitution(pick, mode)
    params["instrument"] = lut.tolist()
    return np.where(is_inst, vocab.INSTRUMENT_OFFSET + lut[np.where(is_inst, t - vocab.INSTRUMENT_OFFSET, 0)], t)


def _warp_window(t: np.ndarray, cfg: AugmentConfig, d: _Draws, start_clock: Callable[[], int] | None, lead: int,
                 params: dict) -> np.ndarray:
    """Stretch, swing and humanize as one warp of the grid, the first `lead` tokens left as they are."""
    do_stretch = d.u[3] < cfg.stretch_prob
    do_swing = d.u[4] < cfg.swing_prob and d.swing > 0
    do_humanize = d.u[5] < cfg.humanize_prob and cfg.humanize_steps > 0
    if not (do_stretch or do_swing or do_humanize):
        return t
    hum_rng = np.random.default_rng(d.hum_seed) if do_humanize else None
    phase0 = int(start_clock()) if do_swing and start_clock is not None else 0
    body = _warp_time(t[lead:], d.stretch if do_stretch else 1.0, d.swing if do_swing else 0.0,
                      cfg.swing_beat_steps, phase0, cfg.humanize_steps if do_humanize else 0, hum_rng)
    if do_stretch:
        params["stretch"] = round(d.stretch, 4)
    if do_swing:
        params["swing"] = round(d.swing, 4)
    if do_humanize:
        params["humanize"] = d.hum_seed
    return np.concatenate([t[:lead], body])


def _substitution(pick: np.ndarray, mode: str) -> np.ndarray:
    """The family permutation of one substitution: each group ("any": all 16 families) in the random order of
    `pick` (one uniform per family), each member mapped to the next one in that order, the last to the first.
    A single cycle: no family maps to itself, no two map to one."""
    lut = np.arange(vocab.NUM_INSTRUMENTS)
    for group in ((tuple(range(vocab.NUM_INSTRUMENTS)),) if mode == "any" else INSTRUMENT_GROUPS):
        order = np.asarray(group)[np.argsort(pick[list(group)], kind="stable")]
        lut[order] = np.roll(order, -1)
    return lut


def _warp_time(t: np.ndarray, factor: float, swing: float, beat: int, phase0: int, humanize: int,
               rng) -> np.ndarray:
    steps = vocab.shift_steps(t)
    is_event = steps == 0
    if not is_event.any() or not (~is_event).any():
        return t
    clock = np.cumsum(steps)
    ev_tok = t[is_event]
    ev_pos = clock[is_event]
    if clock[-1] > ev_pos[-1]:  # trailing shifts: a pseudo event keeps the window's end time
        ev_tok = np.append(ev_tok, -1)
        ev_pos = np.append(ev_pos, clock[-1])
    new_point = np.ones(len(ev_pos), dtype=bool)
    new_point[1:] = ev_pos[1:] > ev_pos[:-1]
    which = np.cumsum(new_point) - 1
    u = ev_pos[new_point].astype(np.float64)
    v = u
    if swing:
        half = beat / 2.0
        phase = np.mod(u + phase0, beat)
        warped = np.where(phase < half, phase * (1 + swing), half * (1 + swing) + (phase - half) * (1 - swing))
        v = u - phase + warped
    v = v * factor
    if humanize:
        v = v + rng.integers(-humanize, humanize + 1, len(v))
    v = np.maximum(np.rint(v).astype(np.int64), 0)
    # distinct positions stay distinct: v_j >= v_(j-1) + 1 (moves only where rounding collided)
    idx = np.arange(len(v))
    v = np.maximum.accumulate(v - idx) + idx
    out = vocab.assemble(ev_tok, v[which])
    return out[:-1] if ev_tok[-1] == -1 else out
