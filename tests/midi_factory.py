"""Build MIDI files and Scores inside tests (hermetic: no data files in the repository)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pretty_midi

from aurl.data.midi_io import Note, Score


def make_pretty_midi(notes, tempo: float = 120.0, program: int = 0, is_drum: bool = False):
    """notes: iterable of (pitch, start s, end s, velocity) on one instrument."""
    pm = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    inst = pretty_midi.Instrument(program=program, is_drum=is_drum)
    for p, s, e, v in notes:
        inst.notes.append(pretty_midi.Note(velocity=v, pitch=p, start=s, end=e))
    pm.instruments.append(inst)
    return pm


def write_simple_midi(path, seed: int = 0, n_notes: int = 40, program: int = 0, tempo: float = 120.0) -> Path:
    """A random but valid little piece (pitches 40..90, a few voices) written to path."""
    rng = np.random.default_rng(seed)
    t = 0.0
    notes = []
    for _ in range(n_notes):
        t += float(rng.choice([0.0, 0.125, 0.25, 0.5]))
        dur = float(rng.choice([0.125, 0.25, 0.5, 1.0]))
        notes.append((int(rng.integers(40, 91)), t, t + dur, int(rng.integers(30, 120))))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_pretty_midi(notes, tempo=tempo, program=program).write(str(path))
    return path


def random_score(seed: int, n_notes: int = 200, n_programs: int = 3, drums: bool = False,
                 pitches: tuple[int, int] = (15, 115)) -> Score:
    """A random Score with overlaps, several programs, tempo changes and pedal (not necessarily on grid);
    drums: every 7th note is a drum; pitches: [low, high) of the pitches drawn (a narrow range = many
    doublings across instruments)."""
    rng = np.random.default_rng(seed)
    start = np.sort(rng.uniform(0, 30, n_notes))
    dur = rng.exponential(0.4, n_notes) + 0.001
    programs = rng.choice(rng.integers(0, 128, n_programs), n_notes)
    notes = [
        Note(int(p), float(s), float(s + d), int(v), int(pr), bool(drums and i % 7 == 0))
        for i, (p, s, d, v, pr) in enumerate(
            zip(rng.integers(*pitches, n_notes), start, dur, rng.integers(1, 128, n_notes), programs, strict=True)
        )
    ]
    tempos = [(0.0, float(rng.uniform(40, 200))), (10.0, float(rng.uniform(40, 200)))]
    ped = np.sort(rng.uniform(0, 30, 6))
    sustain = [(float(t), i % 2 == 0) for i, t in enumerate(ped)]
    return Score.from_notes(notes, tempos=tempos, sustain=sustain)


# ---- readers for the crash-isolation tests (picklable by reference: spawned workers import this module)
def crashing_reader(path, max_seconds=None):
    """Behaves like aurl.data.midi_io.read_midi, but a file named crash* kills the process, hang* hangs."""
    from aurl.data.midi_io import read_midi

    name = Path(path).name
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        Path(path).with_suffix(".hanging").touch()  # tells the test the build reached this file
        time.sleep(3600)
    return read_midi(path) if max_seconds is None else read_midi(path, max_seconds)
