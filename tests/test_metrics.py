"""Music metrics on hand-built note lists with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from aurl.evaluate.metrics import (
    METRIC_NAMES,
    as_piece,
    compare_metrics,
    compute_metrics,
    distribution_overlap,
    empty_beat_rate,
    groove_consistency,
    note_density,
    pitch_class_entropy,
    pitch_range,
    polyphony,
    refine_tempo,
    scale_consistency,
    seconds_to_beats,
)
from aurl.score import Note, Score

C_MAJOR = [60, 62, 64, 65, 67, 69, 71]


def melody(pitches, dur=0.5, start=0.0):
    """One note after another, each `dur` seconds."""
    return [Note(p, start + i * dur, start + (i + 1) * dur, 80) for i, p in enumerate(pitches)]


def test_c_major_scale():
    notes = melody(C_MAJOR + [72])  # the octave repeats pitch class C: counts 2,1,1,1,1,1,1 of 8
    assert scale_consistency(notes) == 1.0
    probs = np.array([2, 1, 1, 1, 1, 1, 1]) / 8
    assert pitch_class_entropy(notes) == pytest.approx(float(-(probs * np.log2(probs)).sum()))
    assert pitch_class_entropy(melody(C_MAJOR)) == pytest.approx(math.log2(7))
    assert pitch_range(notes) == 12


def test_chromatic_scale():
    notes = melody(range(60, 72))
    assert pitch_class_entropy(notes) == pytest.approx(math.log2(12))
    assert scale_consistency(notes) == pytest.approx(7 / 12)
    assert pitch_range(notes) == 11


def test_entropy_counts_notes_not_durations():
    short_long = [Note(60, 0, 0.1, 80), Note(67, 0.1, 10.0, 80)]
    assert pitch_class_entropy(short_long) == pytest.approx(1.0)
    assert pitch_class_entropy([Note(60, 0, 1, 80)] * 5) == 0.0


def test_minor_scale_and_drums_ignored():
    a_minor_harmonic_free = melody([57, 59, 60, 62, 64, 65, 67])  # A natural minor = C major's classes
    assert scale_consistency(a_minor_harmonic_free) == 1.0
    drums = [Note(61, 0, 1, 80, is_drum=True), Note(63, 0, 1, 80, is_drum=True)]
    assert scale_consistency(melody(C_MAJOR) + drums) == 1.0
    assert pitch_range(melody(C_MAJOR) + drums) == 11


def test_polyphony():
    chord = [Note(p, 0.0, 1.0, 80) for p in (60, 64, 67, 72)]
    assert polyphony(chord) == pytest.approx(4.0)
    assert polyphony(melody(C_MAJOR)) == pytest.approx(1.0)
    # 2 voices for 1 s, then 1 voice for 1 s, then a silent second, then 3 voices for 1 s -> (2+1+3)/3
    notes = [Note(60, 0, 2, 80), Note(64, 0, 1, 80), Note(60, 3, 4, 80), Note(62, 3, 4, 80), Note(65, 3, 4, 80)]
    assert polyphony(notes) == pytest.approx(2.0)
    # two overlapping notes of one pitch sound as one pitch (piano-roll semantics)
    assert polyphony([Note(60, 0, 2, 80), Note(60, 1, 3, 80)]) == pytest.approx(1.0)


def test_empty_beat_rate_default_tempo():
    # 120 BPM -> 0.5 s beats; notes fill beats 0 and 2 of 3, beat 1 is a gap
    notes = [Note(60, 0.0, 0.5, 80), Note(62, 1.0, 1.5, 80)]
    assert empty_beat_rate(notes) == pytest.approx(1 / 3)
    # a note that merely touches a beat boundary does not fill the next beat
    assert empty_beat_rate([Note(60, 0.0, 0.5, 80), Note(62, 2.0, 2.5, 80)]) == pytest.approx(3 / 5)
    assert empty_beat_rate(melody(C_MAJOR)) == 0.0
    # a point note (no duration) on a beat line fills the beat it starts (mutation: last not kept past first
    # -> its beat reads empty, 3/4), so of beats 0..3 only 0 and 2 are empty
    assert empty_beat_rate([Note(60, 0.5, 0.5, 80), Note(62, 1.5, 2.0, 80)]) == pytest.approx(2 / 4)


def test_empty_beat_rate_follows_the_tempo_map():
    notes = [Note(60, 0.0, 1.0, 80), Note(62, 2.0, 3.0, 80)]
    # 60 BPM: 1 s beats -> beats 0 and 2 filled, beat 1 empty
    assert empty_beat_rate(notes, tempos=[(0.0, 60.0)]) == pytest.approx(1 / 3)
    # a Score brings its own tempo map
    score = Score.from_notes(notes, tempos=[(0.0, 60.0)])
    assert empty_beat_rate(score) == pytest.approx(1 / 3)
    # tempo change: 60 BPM for 1 s (1 beat), then 120 BPM (0.5 s beats) -> 2 s = beat 3
    piece = as_piece(notes, tempos=[(0.0, 60.0), (1.0, 120.0)])
    assert seconds_to_beats([0.0, 1.0, 2.0, 3.0], piece) == pytest.approx([0, 1, 3, 5])
    assert empty_beat_rate(piece) == pytest.approx(2 / 5)


def test_note_density():
    assert note_density(melody(C_MAJOR, dur=0.5)) == pytest.approx(7 / 3.5)
    assert math.isnan(note_density([]))


def test_groove_consistency():
    quarter = 0.5  # 120 BPM
    bar = [Note(60, i * quarter, (i + 1) * quarter, 80) for i in range(4)]
    same = bar + [Note(n.pitch, n.start + 2.0, n.end + 2.0, 80) for n in bar]
    assert groove_consistency(same) == pytest.approx(1.0)
    # second bar has onsets only on beats 1 and 3: two of 48 positions differ
    other = bar + [Note(60, 2.0, 3.0, 80), Note(60, 3.0, 4.0, 80)]
    assert groove_consistency(other) == pytest.approx(1 - 2 / 48)
    assert math.isnan(groove_consistency(bar))  # one measure: undefined


def test_empty_and_nan():
    m = compute_metrics([])
    assert tuple(m) == METRIC_NAMES
    assert all(math.isnan(v) for v in m.values())


def test_compute_metrics_accepts_score_and_notes_alike():
    notes = melody(C_MAJOR * 3, dur=0.25) + [Note(48, 0, 5.25, 70)]
    a = compute_metrics(notes)
    b = compute_metrics(Score.from_notes(notes))
    assert a == pytest.approx(b, nan_ok=True)
    assert a["polyphony"] == pytest.approx(2.0)


def test_distribution_overlap():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 400)
    assert distribution_overlap(x, x) == pytest.approx(1.0, abs=1e-3)
    assert distribution_overlap(x, rng.normal(0, 1, 400)) > 0.85
    # two unit normals one std apart overlap by 2*Phi(-0.5) = 0.617
    assert distribution_overlap(rng.normal(0, 1, 4000), rng.normal(1, 1, 4000)) == pytest.approx(0.617, abs=0.05)
    assert distribution_overlap(x, x + 100) < 1e-3
    assert distribution_overlap([3.0, 3.0], [3.0]) == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(distribution_overlap([], x))
    assert distribution_overlap([1.0, math.nan], [1.0]) == pytest.approx(1.0, abs=1e-3)
    # sets sharing a point mass overlap by the shared mass (7 of 8 samples at exactly the data's value)
    assert distribution_overlap([0.0] * 20, [0.0] * 7 + [0.075]) == pytest.approx(7 / 8, abs=0.02)


def test_compare_metrics():
    data = [compute_metrics(melody(C_MAJOR, dur=0.25, start=0.01 * i)) for i in range(5)]  # < 2 measures
    samples = [compute_metrics(melody(range(60, 72)))] * 3
    cmp = compare_metrics(data, samples)
    assert set(cmp) == set(METRIC_NAMES)
    e = cmp["pitch_class_entropy"]
    assert e["data"] == pytest.approx(math.log2(7)) and e["samples"] == pytest.approx(math.log2(12))
    assert e["overlap"] < 0.01 and e["data_n"] == 5 and e["samples_n"] == 3
    assert compare_metrics(data, data)["scale_consistency"]["overlap"] == pytest.approx(1.0, abs=1e-3)
    assert cmp["groove_consistency"]["data_n"] == 0 and math.isnan(cmp["groove_consistency"]["data"])


def test_refine_tempo_recovers_the_beat_grid_of_a_binned_tempo():
    # 8 bars of a 120 BPM rhythm, but the tempo map says 123 BPM (as after the vocabulary's tempo bins)
    bar = [(0.0, 0.5), (0.5, 0.75), (0.75, 1.0), (1.0, 2.0)]
    notes = [Note(60, 2.0 * k + s, 2.0 * k + e, 80) for k in range(8) for s, e in bar]
    assert groove_consistency(notes, tempos=[(0.0, 120.0)]) == pytest.approx(1.0)
    assert groove_consistency(notes, tempos=[(0.0, 123.0)]) < 0.95
    refined = compute_metrics(notes, tempos=[(0.0, 123.0)], tempo_tolerance=0.035)
    assert refined["groove_consistency"] == pytest.approx(1.0)
    piece = refine_tempo(as_piece(notes, tempos=[(0.0, 123.0)]), 0.035)
    assert piece.tempo_bpm[0] == pytest.approx(120.0, rel=1e-3)
    exact = as_piece(notes, tempos=[(0.0, 120.0)])
    assert refine_tempo(exact, 0.035).tempo_bpm[0] == pytest.approx(120.0, rel=1e-3)


def test_drums_are_not_harmony_but_do_fill_beats():
    """A C major melody with a drum kit on top, as decode gives it from the drum kit (is_drum): the harmony
    metrics read the melody alone (a Score and note objects alike), the rhythm metrics count the drum hits."""
    from aurl import codec

    tune = melody(C_MAJOR, dur=1.0)
    hits = [Note(p, 0.5 * k, 0.5 * k + 0.1, 100, is_drum=True) for k, p in enumerate([36, 42, 38, 49] * 4)]
    score = codec.decode(codec.encode(Score.from_notes(tune + hits)))
    assert int(score.is_drum.sum()) == len(hits)
    compared = 0
    for piece in (score, score.notes):
        alone = compute_metrics([n for n in score.notes if not n.is_drum])
        both = compute_metrics(piece)
        for name in ("pitch_class_entropy", "scale_consistency", "polyphony", "pitch_range"):
            assert both[name] == alone[name], name  # drum keys (36, 42, 38, 49) would add classes and range
            compared += 1
        assert both["note_density"] == pytest.approx((len(tune) + len(hits)) / score.duration)
        assert both["note_density"] > alone["note_density"]
        compared += 1
    assert compared == 10
    assert pitch_class_entropy(score) == pytest.approx(math.log2(7)) and pitch_range(score) == 11
    # drums alone: no harmony (NaN), but a groove
    kit = [n for n in score.notes if n.is_drum]
    assert math.isnan(pitch_class_entropy(kit)) and math.isnan(polyphony(kit))
    assert empty_beat_rate(kit) == 0.0 and note_density(kit) > 0
