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


# ---- multi-track arrangements (pop band, small orchestra): doublings across instruments, drums, overlaps
_BAND = {  # part -> (GM program, is_drum)
    "pop": {"piano": (0, False), "guitar": (25, False), "pad": (48, False), "bass": (33, False),
            "lead": (80, False), "flute": (73, False), "drums": (0, True)},
    "orchestral": {"horns": (60, False), "violins": (40, False), "strings": (48, False), "bassoon": (70, False),
                   "flute": (73, False), "oboe": (68, False), "percussion": (0, True)},
}  # roles in order: chord strikes, off-beat strikes, held chord, bass, melody, melody's double, drums


def arrangement_midi(seed: int, style: str = "pop", bars: int = 24, same_instrument_overlaps: bool = False,
                     out_of_range: int = 2):
    """A pretty_midi arrangement as such music has it: chords held on one instrument while another strikes
    the same pitches, a melody doubled in unison by a second family, bass doubled an octave above by
    another family, drums (GM keys, short hits and a long crash), onsets humanized off the grid by a few ms.

    same_instrument_overlaps: also a second part of one family playing a few of the same pitches at once
    (a unison inside a family: merged) and a few legato re-strikes of a held pitch (truncated), about 1 in
    300 notes. out_of_range: notes outside 21..108 added (dropped and counted by the vocabulary).
    """
    rng = np.random.default_rng(seed)
    parts = _BAND[style]
    pm = pretty_midi.PrettyMIDI(initial_tempo=120.0)
    inst = {name: pretty_midi.Instrument(program=prog, is_drum=drum, name=name) for name, (prog, drum) in parts.items()}
    beat = 0.5
    jit = lambda: float(rng.uniform(-0.004, 0.004))  # noqa: E731 - humanized onsets, a quarter step at most

    def note(part, pitch, start, end, vel=None):
        s = max(0.0, start + jit())
        inst[part].notes.append(pretty_midi.Note(int(vel or rng.integers(50, 110)), int(pitch), s, max(end + jit(), s + 0.02)))

    names = list(parts)
    chord_part, strike_part, hold_part, bass_part, mel_part, dbl_part, kit = names
    for bar in range(bars):
        t0 = bar * 4 * beat
        root = 48 + int(rng.choice([0, 5, 7, 9]))
        chord = [root + 12, root + 16, root + 19]
        for p in chord:  # held for the bar on one family, struck on two others: doublings across instruments
            note(hold_part, p, t0, t0 + 4 * beat)
        for k in range(4):
            for p in chord:
                note(chord_part, p, t0 + k * beat, t0 + (k + 0.9) * beat)
        for k in range(8):
            if rng.random() < 0.7:
                note(strike_part, int(rng.choice(chord)), t0 + k * beat / 2, t0 + (k + 0.8) * beat / 2)
        for k in range(2):  # bass, doubled an octave above by the chord family at times
            note(bass_part, root - 12, t0 + 2 * k * beat, t0 + (2 * k + 1.8) * beat)
        t = t0
        while t < t0 + 4 * beat - 1e-9:  # melody in unison on two families
            d = min(float(rng.choice([0.25, 0.5, 1.0])) * beat, t0 + 4 * beat - t)  # the bar ends the phrase
            p = int(rng.choice(chord)) + 12
            note(mel_part, p, t, t + 0.9 * d)
            note(dbl_part, p, t, t + 0.85 * d)
            t += d
        for k in range(8):  # drums: hat on 8ths, kick on 1 and 3, snare on 2 and 4, crash every 4 bars
            note(kit, 42, t0 + k * beat / 2, t0 + k * beat / 2 + 0.05)
            if k % 4 == 0:
                note(kit, 36, t0 + k * beat / 2, t0 + k * beat / 2 + 0.1)
            if k % 4 == 2:
                note(kit, 38, t0 + k * beat / 2, t0 + k * beat / 2 + 0.1)
        if bar % 4 == 0:
            note(kit, 49, t0, t0 + 1.5)
    if same_instrument_overlaps:
        twin = pretty_midi.Instrument(program=parts[hold_part][0] + 1, name="twin")  # same family, other program
        for bar in range(0, bars, 8):
            p = inst[hold_part].notes[3 * bar]
            twin.notes.append(pretty_midi.Note(70, p.pitch, p.start, p.end))  # unison at the same onset: merged
        pm.instruments.append(twin)
        for bar in range(1, bars, 8):  # a legato re-strike: held 0.1 s into the next note of that pitch
            first = [n for n in inst[chord_part].notes if bar * 4 * beat <= n.start < (bar * 4 + 1) * beat][0]
            first.end += 0.1 * beat + beat
    for k in range(out_of_range):
        note(chord_part, 12 + k, k * beat, (k + 1) * beat)
    pm.instruments.extend(inst.values())
    return pm


def vocab_v1_spec() -> dict:
    """aurl.vocab's spec before the drum kit and the (instrument, pitch) note scope (version 1: 512 shifts,
    drums dropped): what old caches and checkpoints carry."""
    from aurl import vocab

    spec = vocab.vocab_spec()
    ranges = [dict(r, count=512) if r["kind"] == "time_shift" else r for r in spec["ranges"] if r["kind"] != "drum_kit"]
    old = {**spec, "version": 1, "ranges": ranges, "max_shift_steps": 512,
           "instrument": "GM program family = program // 8; drums dropped"}
    del old["note_scope"]
    return old


def spec_hash(spec: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()
