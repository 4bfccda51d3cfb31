"""Objective music metrics of one piece, and the overlap of two sets of per-piece values.

Every metric is a pure function of a piece given as an ``aurl.score.Score`` or as any sequence of
note objects with ``pitch``, ``start`` and ``end`` (seconds) and, optionally, ``is_drum`` (e.g.
``Score.notes``). Drum notes are not harmony (their "pitch" names a drum): the pitch metrics
(pitch_class_entropy, scale_consistency, polyphony, pitch_range) read only the pitched notes; the rhythm
metrics (empty_beat_rate, note_density, groove_consistency) read every note, drums included, since a drum
hit fills a beat and makes a groove. A metric that is undefined for a piece (no notes, fewer than two
measures, ...) is NaN; aggregates skip NaNs.

Definitions (MusPy's, Dong et al. 2020, unless stated):
- pitch_class_entropy: Shannon entropy in bits of the pitch-class histogram, each NOTE counted once
  (not weighted by duration). A C major scale (7 distinct classes, one note each) gives log2(7).
- scale_consistency: the largest fraction of notes (counted per note) whose pitch class lies in one of
  the 24 major / natural-minor scales.
- polyphony: the mean number of distinct pitches sounding, time-weighted over the time when at least one
  pitch sounds (MusPy's piano-roll average, computed exactly on note intervals instead of a tick grid).
- pitch_range: highest minus lowest pitch, in semitones.
- empty_beat_rate: the share of beats in which no note sounds. Beats come from the piece's tempo map
  (piecewise-constant BPM; 120 BPM when it has none, MIDI's default) and run from time 0 to the last
  note's end; beat i is empty when no note interval overlaps [beat i, beat i + 1) by a positive amount.
- note_density: notes per second, over the time from 0 to the last note's end.
- groove_consistency: 1 - mean Hamming distance between the onset patterns of neighbouring measures,
  each divided by the positions per measure. Our vocabulary carries no time signature, so a measure is
  taken as 4 beats of 12 positions each (16ths and triplets both land on the grid); onsets are rounded to
  the nearest position. NaN for pieces shorter than two measures.
- distribution_overlap (Yang & Lerch 2020, simplified as in the issue): the overlapping area
  integral(min(p, q)) of Gaussian kernel density estimates of two sets of per-piece values; 1 = same
  distribution, 0 = disjoint.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence

import numpy as np

from aurl.score import Score

DEFAULT_BPM = 120.0
BEATS_PER_MEASURE = 4
POSITIONS_PER_BEAT = 12

# the seven metrics reported for each piece, in report order
METRIC_NAMES = (
    "pitch_class_entropy",
    "scale_consistency",
    "polyphony",
    "pitch_range",
    "empty_beat_rate",
    "note_density",
    "groove_consistency",
)

_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)  # natural minor
# [24, 12] membership table: rows = C major, C# major, ..., B major, C minor, ..., B minor
_SCALES = np.zeros((24, 12), dtype=bool)
for _root in range(12):
    _SCALES[_root, [(_root + i) % 12 for i in _MAJOR]] = True
    _SCALES[12 + _root, [(_root + i) % 12 for i in _MINOR]] = True


# ----------------------------------------------------------------------------------------------------------
# Input
def _score(pitch, start, end, tempo_time, tempo_bpm, is_drum) -> Score:
    """What every metric reads: a Score whose note ends are not before their starts."""
    start = np.asarray(start, dtype=np.float64).reshape(-1)
    n = len(start)
    return Score(pitch=np.asarray(pitch, dtype=np.int64).reshape(-1), start=start,
                 end=np.maximum(np.asarray(end, dtype=np.float64).reshape(-1), start),
                 velocity=np.zeros(n, np.int64), program=np.zeros(n, np.int64),
                 is_drum=np.asarray(is_drum, dtype=bool).reshape(-1), tempo_time=tempo_time, tempo_bpm=tempo_bpm)


def pitched(piece: Score) -> Score:
    """The piece without its drum notes: what the harmony metrics read."""
    if not piece.is_drum.any():
        return piece
    keep = ~piece.is_drum
    return _score(piece.pitch[keep], piece.start[keep], piece.end[keep], piece.tempo_time, piece.tempo_bpm,
                  piece.is_drum[keep])


def as_piece(notes, tempos: Iterable[tuple[float, float]] | None = None) -> Score:
    """The notes (drums flagged) and tempo map of a Score or of note objects (+ optional (time s, bpm) tempo
    changes), as a Score. A Score brings its own tempo map unless `tempos` is given."""
    if isinstance(notes, Score):
        t_time, t_bpm = notes.tempo_time, notes.tempo_bpm
        if tempos is not None:
            tempos = list(tempos)
            t_time, t_bpm = [t for t, _ in tempos], [b for _, b in tempos]
        return _score(notes.pitch, notes.start, notes.end, t_time, t_bpm, notes.is_drum)
    notes = list(notes)
    tempos = list(tempos or ())
    return _score([n.pitch for n in notes], [n.start for n in notes], [n.end for n in notes],
                  [t for t, _ in tempos], [b for _, b in tempos], [getattr(n, "is_drum", False) for n in notes])


# ----------------------------------------------------------------------------------------------------------
# Beat grid
def _tempo_map(piece: Score) -> tuple[np.ndarray, np.ndarray]:
    """(segment start times, bpm) sorted, starting at 0 (120 BPM until the first change)."""
    t, b = piece.tempo_time, piece.tempo_bpm
    valid = np.isfinite(t) & np.isfinite(b) & (b > 0)
    t, b = t[valid], b[valid]
    if len(t) == 0 or t.min() > 0:
        t, b = np.r_[0.0, t], np.r_[DEFAULT_BPM, b]
    o = np.argsort(t, kind="stable")
    t, b = np.maximum(t[o], 0.0), b[o]
    last = np.append(t[1:] != t[:-1], True)  # several changes at one time: the last one holds
    return t[last], b[last]


def seconds_to_beats(seconds, piece: Score) -> np.ndarray:
    """Beat positions (quarter notes from time 0) of times in seconds, under the piece's tempo map."""
    t, b = _tempo_map(piece)
    beats_at = np.concatenate([[0.0], np.cumsum(np.diff(t) * b[:-1] / 60.0)])
    s = np.asarray(seconds, dtype=np.float64)
    k = np.clip(np.searchsorted(t, s, side="right") - 1, 0, len(t) - 1)
    return beats_at[k] + (s - t[k]) * b[k] / 60.0


def refine_tempo(piece: Score, tolerance: float, candidates: int = 201) -> Score:
    """The piece with every BPM scaled by the one factor within 1 +- tolerance that best puts its onsets on
    16th-note positions (mean distance to the nearest 16th; ties go to the factor closest to 1).

    Why: the vocabulary stores tempo in geometric bins about 7 % apart (it is metadata, times are in
    seconds), so a decoded piece's BPM can be 3.5 % off and its beat grid drifts by half a beat within a
    chorale. The beat metrics of decoded pieces (data and samples alike) are computed on the refined grid.
    """
    if tolerance <= 0 or piece.num_notes == 0:
        return piece
    t, b = _tempo_map(piece)
    factors = np.exp(np.linspace(-math.log1p(tolerance), math.log1p(tolerance), candidates))
    onsets = np.unique(piece.start)
    beats_at = np.concatenate([[0.0], np.cumsum(np.diff(t) * b[:-1] / 60.0)])
    k = np.clip(np.searchsorted(t, onsets, side="right") - 1, 0, len(t) - 1)
    beats = beats_at[k] + (onsets - t[k]) * b[k] / 60.0  # at factor 1; beats scale linearly with the factor
    x = 4.0 * factors[:, None] * beats[None, :]
    cost = np.abs(x - np.rint(x)).mean(1)
    best = np.flatnonzero(cost <= cost.min() + 1e-9)
    f = float(factors[best[np.argmin(np.abs(np.log(factors[best])))]])
    return dataclasses.replace(piece, tempo_time=t, tempo_bpm=b * f)


# ----------------------------------------------------------------------------------------------------------
# Per-piece metrics
def pitch_class_entropy(notes, tempos=None) -> float:
    """Entropy (bits) of the pitch-class histogram, one count per note. NaN without notes."""
    p = pitched(as_piece(notes, tempos))
    if p.num_notes == 0:
        return math.nan
    counts = np.bincount(p.pitch % 12, minlength=12).astype(np.float64)
    prob = counts[counts > 0] / counts.sum()
    return float(-(prob * np.log2(prob)).sum())


def scale_consistency(notes, tempos=None) -> float:
    """Largest fraction of notes in one major or natural-minor scale (24 candidates). NaN without notes."""
    p = pitched(as_piece(notes, tempos))
    if p.num_notes == 0:
        return math.nan
    counts = np.bincount(p.pitch % 12, minlength=12)
    return float((_SCALES @ counts).max() / p.num_notes)


def polyphony(notes, tempos=None) -> float:
    """Mean number of distinct pitches sounding while at least one sounds (time-weighted). NaN if silent."""
    p = pitched(as_piece(notes, tempos))
    sounding = p.end > p.start
    if not sounding.any():
        return math.nan
    # merge overlapping intervals of the same pitch so a pitch counts once (as in a piano roll)
    pitch, start, end = p.pitch[sounding], p.start[sounding], p.end[sounding]
    o = np.lexsort((start, pitch))
    pitch, start, end = pitch[o], start[o], end[o]
    # running max of ends within each pitch: offset pitch groups so one accumulate never crosses them
    group = np.cumsum(np.r_[True, pitch[1:] != pitch[:-1]])
    offset = group * (float(end.max()) + 1.0)
    run_end = np.maximum.accumulate(end + offset) - offset
    new_run = np.ones(len(pitch), dtype=bool)
    new_run[1:] = (pitch[1:] != pitch[:-1]) | (start[1:] > run_end[:-1])
    run_id = np.cumsum(new_run) - 1
    m_start = start[new_run]
    m_end = np.zeros(len(m_start))
    np.maximum.at(m_end, run_id, run_end)
    times = np.concatenate([m_start, m_end])
    delta = np.concatenate([np.ones(len(m_start)), -np.ones(len(m_end))])
    o = np.argsort(times, kind="stable")
    times, delta = times[o], delta[o]
    count = np.cumsum(delta)[:-1]  # pitches sounding on [times[i], times[i+1])
    dt = np.diff(times)
    busy = dt[count > 0].sum()
    return float((count * dt).sum() / busy) if busy > 0 else math.nan


def pitch_range(notes, tempos=None) -> float:
    """Highest minus lowest pitch (semitones). NaN without notes."""
    p = pitched(as_piece(notes, tempos))
    if p.num_notes == 0:
        return math.nan
    return float(p.pitch.max() - p.pitch.min())


def note_density(notes, tempos=None) -> float:
    """Notes per second from time 0 to the last note's end. NaN without notes."""
    p = as_piece(notes, tempos)
    if p.num_notes == 0 or p.duration <= 0:
        return math.nan
    return p.num_notes / p.duration


def empty_beat_rate(notes, tempos=None) -> float:
    """Share of beats (tempo map, default 120 BPM) from 0 to the last note's end in which nothing sounds."""
    p = as_piece(notes, tempos)
    if p.num_notes == 0 or p.duration <= 0:
        return math.nan
    b_start = seconds_to_beats(p.start, p)
    b_end = seconds_to_beats(p.end, p)
    n_beats = max(1, math.ceil(float(b_end.max()) - 1e-9))
    first = np.floor(b_start + 1e-9).astype(np.int64)
    last = np.maximum(np.ceil(b_end - 1e-9).astype(np.int64), first + 1)  # exclusive; a point note fills its beat
    cover = np.zeros(n_beats + 1, dtype=np.int64)
    np.add.at(cover, np.clip(first, 0, n_beats), 1)
    np.add.at(cover, np.clip(last, 0, n_beats), -1)
    filled = np.cumsum(cover)[:n_beats] > 0
    return float((~filled).sum() / n_beats)


def groove_consistency(notes, tempos=None, beats_per_measure: int = BEATS_PER_MEASURE,
                       positions_per_beat: int = POSITIONS_PER_BEAT) -> float:
    """1 - mean Hamming distance of neighbouring measures' onset patterns (per position). NaN < 2 measures."""
    p = as_piece(notes, tempos)
    if p.num_notes == 0:
        return math.nan
    per_measure = beats_per_measure * positions_per_beat
    pos = np.maximum(np.rint(seconds_to_beats(p.start, p) * positions_per_beat).astype(np.int64), 0)
    end_beats = float(seconds_to_beats(np.array([p.duration]), p)[0])
    n_measures = max(math.ceil(end_beats / beats_per_measure - 1e-9), int(pos.max()) // per_measure + 1)
    if n_measures < 2:
        return math.nan
    grid = np.zeros((n_measures, per_measure), dtype=bool)
    grid[pos // per_measure, pos % per_measure] = True
    hamming = np.count_nonzero(grid[:-1] != grid[1:])
    return float(1.0 - hamming / (per_measure * (n_measures - 1)))


_FUNCTIONS = {
    "pitch_class_entropy": pitch_class_entropy,
    "scale_consistency": scale_consistency,
    "polyphony": polyphony,
    "pitch_range": pitch_range,
    "empty_beat_rate": empty_beat_rate,
    "note_density": note_density,
    "groove_consistency": groove_consistency,
}
assert tuple(_FUNCTIONS) == METRIC_NAMES


def compute_metrics(notes, tempos=None, tempo_tolerance: float = 0.0) -> dict[str, float]:
    """All seven metrics of one piece (a Score or note objects), in METRIC_NAMES order.

    tempo_tolerance > 0: refine the tempo map first (see refine_tempo; for pieces decoded from tokens).
    """
    piece = refine_tempo(as_piece(notes, tempos), tempo_tolerance)
    return {name: fn(piece) for name, fn in _FUNCTIONS.items()}


# ----------------------------------------------------------------------------------------------------------
# Distributions
def _bandwidth(x: np.ndarray, floor: float) -> float:
    """Silverman's rule of thumb, never below `floor` (a constant set would otherwise be a delta)."""
    n = len(x)
    std = float(x.std(ddof=1)) if n > 1 else 0.0
    q75, q25 = np.percentile(x, [75, 25])
    spread = min(std, (q75 - q25) / 1.349) if q75 > q25 else std
    return max(0.9 * spread * n ** -0.2, floor)


def distribution_overlap(a: Sequence[float], b: Sequence[float], grid_points: int = 2048) -> float:
    """Overlapping area of the Gaussian KDEs of two samples of a feature (NaNs dropped).

    1.0 for identical samples, near 0 for far-apart ones; NaN when either side has no finite value.
    Bandwidth: the mean of the two sets' Silverman bandwidths, used for both; each at least 1 % of the
    pooled spread (or of the magnitude for constant sets) so that sets of identical values have a width.
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if len(a) == 0 or len(b) == 0:
        return math.nan
    pooled = np.concatenate([a, b])
    scale = float(pooled.max() - pooled.min()) or float(np.abs(pooled).max()) or 1.0
    floor = 0.01 * scale
    # one bandwidth for both (the mean of their own): two sets that share a point mass (e.g. mostly 0.0)
    # then overlap by the mass they share, whatever the spread of the rest
    ha = hb = 0.5 * (_bandwidth(a, floor) + _bandwidth(b, floor))
    lo = float(pooled.min()) - 5 * max(ha, hb)
    hi = float(pooled.max()) + 5 * max(ha, hb)
    x = np.linspace(lo, hi, grid_points)

    def kde(v: np.ndarray, h: float) -> np.ndarray:
        z = (x[:, None] - v[None, :]) / h
        return np.exp(-0.5 * z * z).sum(1) / (len(v) * h * math.sqrt(2 * math.pi))

    pa, pb = kde(a, ha), kde(b, hb)
    dx = x[1] - x[0]
    area = float(np.minimum(pa, pb).sum() * dx)
    return min(1.0, max(0.0, area))


def compare_metrics(data: Sequence[dict[str, float]], samples: Sequence[dict[str, float]]) -> dict[str, dict]:
    """Per metric: mean over data pieces, mean over samples (NaNs skipped) and the overlap of the two sets.

    -> {name: {"data": float, "samples": float, "overlap": float, "data_n": int, "samples_n": int}}
    """
    out = {}
    for name in METRIC_NAMES:
        d = np.array([m[name] for m in data], dtype=np.float64)
        s = np.array([m[name] for m in samples], dtype=np.float64)
        d, s = d[np.isfinite(d)], s[np.isfinite(s)]
        out[name] = {
            "data": float(d.mean()) if len(d) else math.nan,
            "samples": float(s.mean()) if len(s) else math.nan,
            "overlap": distribution_overlap(d, s),
            "data_n": int(len(d)),
            "samples_n": int(len(s)),
        }
    return out
