"""One piece of music, the type every layer shares: the reader and writer (aurl.data.midi_io), the
vocabulary (aurl.vocab), the music metrics (aurl.evaluate.metrics) and the pictures.

A ``Score`` is columnar (one numpy array per note field, times in seconds) so that encoding a long file is a
handful of vectorized operations; ``Score.notes`` gives the readable list of ``Note`` objects. Nothing here
reads files or imports anything of aurl.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Note:
    pitch: int
    start: float  # seconds
    end: float  # seconds
    velocity: int
    program: int = 0
    is_drum: bool = False


def _arr(dtype):
    return field(default_factory=lambda: np.zeros(0, dtype=dtype))


@dataclass
class Score:
    """Notes (columnar, seconds), tempo changes and sustain-pedal changes of one piece."""

    pitch: np.ndarray = _arr(np.int64)
    start: np.ndarray = _arr(np.float64)
    end: np.ndarray = _arr(np.float64)
    velocity: np.ndarray = _arr(np.int64)
    program: np.ndarray = _arr(np.int64)
    is_drum: np.ndarray = _arr(bool)
    tempo_time: np.ndarray = _arr(np.float64)
    tempo_bpm: np.ndarray = _arr(np.float64)
    sustain_time: np.ndarray = _arr(np.float64)
    sustain_on: np.ndarray = _arr(bool)

    def __post_init__(self):
        self.pitch = np.asarray(self.pitch, dtype=np.int64)
        self.start = np.asarray(self.start, dtype=np.float64)
        self.end = np.asarray(self.end, dtype=np.float64)
        self.velocity = np.asarray(self.velocity, dtype=np.int64)
        self.program = np.asarray(self.program, dtype=np.int64)
        self.is_drum = np.asarray(self.is_drum, dtype=bool)
        self.tempo_time = np.asarray(self.tempo_time, dtype=np.float64)
        self.tempo_bpm = np.asarray(self.tempo_bpm, dtype=np.float64)
        self.sustain_time = np.asarray(self.sustain_time, dtype=np.float64)
        self.sustain_on = np.asarray(self.sustain_on, dtype=bool)
        n = len(self.pitch)
        assert all(len(a) == n for a in (self.start, self.end, self.velocity, self.program, self.is_drum))
        assert len(self.tempo_time) == len(self.tempo_bpm) and len(self.sustain_time) == len(self.sustain_on)

    @classmethod
    def from_notes(cls, notes, tempos=((0.0, 120.0),), sustain=()) -> Score:
        """Build from Note objects, (time s, bpm) tempo changes and (time s, on) pedal changes."""
        notes = list(notes)
        return cls(
            pitch=[n.pitch for n in notes],
            start=[n.start for n in notes],
            end=[n.end for n in notes],
            velocity=[n.velocity for n in notes],
            program=[n.program for n in notes],
            is_drum=[n.is_drum for n in notes],
            tempo_time=[t for t, _ in tempos],
            tempo_bpm=[b for _, b in tempos],
            sustain_time=[t for t, _ in sustain],
            sustain_on=[bool(on) for _, on in sustain],
        )

    @property
    def notes(self) -> list[Note]:
        return [
            Note(int(p), float(s), float(e), int(v), int(pr), bool(d))
            for p, s, e, v, pr, d in zip(
                self.pitch, self.start, self.end, self.velocity, self.program, self.is_drum, strict=True
            )
        ]

    @property
    def num_notes(self) -> int:
        return len(self.pitch)

    @property
    def duration(self) -> float:
        """Seconds to the last note's end (0 for no notes)."""
        return float(self.end.max()) if len(self.end) else 0.0
