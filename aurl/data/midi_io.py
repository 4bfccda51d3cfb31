"""MIDI in and out: read with symusic (fast), write with pretty_midi (tests/test_midi_io.py checks the reader
against pretty_midi's).

What is read and written is an ``aurl.score.Score`` (re-exported here with ``Note``).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from aurl.score import Note, Score  # noqa: F401 -- Note re-exported: callers know it as midi_io.Note

MAX_SECONDS = 4 * 3600.0  # a file longer than this is "absurd" (corrupt tick values), not music
SUSTAIN_CC = 64


class MidiReadError(Exception):
    """A file that cannot be used, with the reason shown in the build summary."""


# ----------------------------------------------------------------------------------------------------------
# Reading
def check_header(data: bytes) -> str | None:
    """The reason a file is unusable judged from its first bytes, or None (symusic checks the rest)."""
    if len(data) == 0:
        return "empty file"
    if data[:4] != b"MThd":
        return "not a MIDI file (no MThd header)"
    if len(data) < 14:
        return "truncated (incomplete header)"
    (division,) = struct.unpack(">h", data[12:14])
    if division <= 0:
        # negative = SMPTE time codes, which no reader here supports; zero = no timing at all
        return f"ticks per beat is {division} (must be > 0)"
    return None


def read_midi(path: str | Path, max_seconds: float = MAX_SECONDS) -> Score:
    """Read a MIDI file with symusic. Raises MidiReadError(reason) for a file that cannot be used."""
    import symusic

    data = Path(path).read_bytes()
    reason = check_header(data)
    if reason:
        raise MidiReadError(reason)
    try:
        score = symusic.Score.from_midi(data).to("second")
    except RuntimeError as e:  # symusic's error for malformed/truncated data
        raise MidiReadError(f"unreadable ({str(e).strip()[:120]})") from e
    end = float(score.end())
    if not np.isfinite(end) or end > max_seconds:
        raise MidiReadError(f"absurd length ({end:.0f} s > {max_seconds:.0f} s)")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("pitch", "start", "dur", "vel", "prog", "drum")}
    sus_t, sus_v = [], []
    for track in score.tracks:
        n = track.notes.numpy()
        k = len(n["pitch"])
        if k:
            cols["pitch"].append(n["pitch"].astype(np.int64))
            cols["start"].append(n["time"].astype(np.float64))
            cols["dur"].append(n["duration"].astype(np.float64))
            cols["vel"].append(n["velocity"].astype(np.int64))
            cols["prog"].append(np.full(k, int(track.program), dtype=np.int64))
            cols["drum"].append(np.full(k, bool(track.is_drum)))
        if not track.is_drum:
            c = track.controls.numpy()
            sel = c["number"] == SUSTAIN_CC
            sus_t.append(c["time"][sel].astype(np.float64))
            sus_v.append(c["value"][sel] >= 64)
    if not cols["pitch"]:
        raise MidiReadError("no notes")
    tempos = score.tempos.numpy()
    start = np.concatenate(cols["start"])
    sus_time = np.concatenate(sus_t) if sus_t else np.zeros(0)
    sus_on = np.concatenate(sus_v) if sus_v else np.zeros(0, dtype=bool)
    o = np.argsort(sus_time, kind="stable")
    return Score(
        pitch=np.concatenate(cols["pitch"]),
        start=start,
        end=start + np.maximum(np.concatenate(cols["dur"]), 0.0),
        velocity=np.concatenate(cols["vel"]),
        program=np.concatenate(cols["prog"]),
        is_drum=np.concatenate(cols["drum"]),
        tempo_time=tempos["time"].astype(np.float64),
        tempo_bpm=60e6 / np.maximum(tempos["mspq"].astype(np.float64), 1.0),
        sustain_time=sus_time[o],
        sustain_on=sus_on[o],
    )


# ----------------------------------------------------------------------------------------------------------
# Writing
def write_midi(score: Score, path: str | Path, resolution: int = 960) -> None:
    """Write with pretty_midi: one instrument per (program, drum), every tempo change, CC64 on the first."""
    import pretty_midi

    from aurl.atomic import atomic_write_bytes

    t_time, t_bpm = score.tempo_time, score.tempo_bpm
    if len(t_time) == 0 or t_time.min() > 0:
        t_time, t_bpm = np.r_[0.0, t_time], np.r_[120.0, t_bpm]
    o = np.argsort(t_time, kind="stable")
    t_time, t_bpm = t_time[o], t_bpm[o]
    pm = pretty_midi.PrettyMIDI(resolution=resolution, initial_tempo=float(t_bpm[0]))
    # pretty_midi writes tempo changes from _tick_scales (tick, seconds per tick); it has no public setter
    scales, tick, last_t = [], 0, 0.0
    for t, bpm in zip(t_time.tolist(), t_bpm.tolist(), strict=True):
        if scales:
            tick += int(round((t - last_t) / scales[-1][1]))
        last_t = t
        # the file stores integer microseconds per quarter (pretty_midi truncates): convert note times with
        # exactly that tempo, or a long piece drifts (~16 ms after 2 h)
        mspq = max(1, round(60e6 / bpm))
        spt = (mspq + 1e-4) / (1e6 * resolution)
        if scales and scales[-1][0] == tick:
            scales[-1] = (tick, spt)
        else:
            scales.append((tick, spt))
    pm._tick_scales = scales
    end_time = max(score.duration, float(t_time.max()), float(score.sustain_time.max(initial=0.0))) + 1.0
    pm._update_tick_to_time(int(tick + (end_time - last_t) / scales[-1][1]) + 1)

    instruments: dict[tuple[int, bool], pretty_midi.Instrument] = {}
    for n in score.notes:
        key = (n.program, n.is_drum)
        if key not in instruments:
            instruments[key] = pretty_midi.Instrument(program=n.program, is_drum=n.is_drum)
        instruments[key].notes.append(pretty_midi.Note(n.velocity, n.pitch, n.start, n.end))
    if not instruments:
        instruments[(0, False)] = pretty_midi.Instrument(program=0)
    pedal_written = False
    for (_, drum), inst in sorted(instruments.items()):
        if not drum and not pedal_written:  # the vocabulary's pedal is global: one track carries it
            pedal_written = True
            for t, on in zip(score.sustain_time.tolist(), score.sustain_on.tolist(), strict=True):
                inst.control_changes.append(pretty_midi.ControlChange(SUSTAIN_CC, 127 if on else 0, t))
        pm.instruments.append(inst)
    import io

    buf = io.BytesIO()
    pm.write(buf)
    atomic_write_bytes(path, buf.getvalue())
