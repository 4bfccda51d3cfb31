"""aurl.score: a Score holds its notes column by column (one dtype per field, whatever it is built from),
gives them back as Note objects in order, and knows its duration; columns of unequal length are refused."""

from __future__ import annotations

import numpy as np
import pytest

from aurl.score import Note, Score


def test_from_notes_round_trips_and_columns_have_their_dtypes():
    """Mutation: duration taken from the latest start instead of the latest end -> fails."""
    notes = [Note(60, 0.0, 2.5, 100), Note(38, 0.5, 0.75, 90, 0, True), Note(64, 1.0, 1.5, 80, 40)]
    score = Score.from_notes(notes, tempos=((0.0, 90.0), (1.0, 120.0)), sustain=((0.25, 1), (0.5, 0)))
    assert score.notes == notes and score.num_notes == 3
    assert score.duration == 2.5
    assert score.tempo_bpm.tolist() == [90.0, 120.0] and score.sustain_on.tolist() == [True, False]
    dtypes = {name: getattr(score, name).dtype for name in ("pitch", "start", "velocity", "is_drum", "sustain_on")}
    assert dtypes == {"pitch": np.int64, "start": np.float64, "velocity": np.int64, "is_drum": bool,
                      "sustain_on": bool}
    assert isinstance(score.notes[0].pitch, int) and isinstance(score.notes[0].start, float)
    empty = Score()
    assert empty.num_notes == 0 and empty.duration == 0.0 and empty.notes == []


def test_columns_get_their_dtypes_from_plain_lists_and_duration_counts_from_time_zero():
    """Mutations: __post_init__ without dtype=bool for sustain_on -> fails (ints stay ints); duration as the
    latest end less the earliest start -> fails (a piece that starts late still lasts to its last end)."""
    score = Score(pitch=[60.0, 62.0], start=[1, 2], end=[3, 4], velocity=[80.0, 90.0], program=[0, 0],
                  is_drum=[0, 1], tempo_time=[0], tempo_bpm=[120], sustain_time=[1], sustain_on=[1])
    dtypes = {name: getattr(score, name).dtype for name in ("pitch", "start", "end", "velocity", "is_drum",
                                                            "tempo_time", "tempo_bpm", "sustain_on")}
    assert dtypes == {"pitch": np.int64, "start": np.float64, "end": np.float64, "velocity": np.int64,
                      "is_drum": bool, "tempo_time": np.float64, "tempo_bpm": np.float64, "sustain_on": bool}
    assert score.duration == 4.0


def test_columns_of_unequal_length_are_refused():
    with pytest.raises(AssertionError):
        Score(pitch=[60, 62], start=[0.0], end=[1.0], velocity=[80], program=[0], is_drum=[False])
    with pytest.raises(AssertionError):
        Score(tempo_time=[0.0, 1.0], tempo_bpm=[120.0])
