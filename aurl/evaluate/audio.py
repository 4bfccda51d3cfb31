"""Samples as sound: MIDI -> WAV with FluidSynth and a General MIDI SoundFont, written next to the MIDI.

    from aurl.evaluate.audio import render_midi
    wav = render_midi("outputs/eval/stage1/sample_000.mid")   # .../sample_000.wav, or None without a synthesizer

The synthesizer is the `fluidsynth` command (Debian: `apt-get install fluidsynth timgm6mb-soundfont`, or
`fluid-soundfont-gm` for a fuller sound), chosen at run time:
- AURL_FLUIDSYNTH: the command, a name on PATH or a path (default "fluidsynth"); "off" renders nothing, silently.
- AURL_SOUNDFONT: the .sf2 file (default: the best General MIDI SoundFont installed, SOUNDFONTS in order).
Without a synthesizer or SoundFont, rendering warns once per process and returns None: evaluation goes on.

Why this format: 22.05 kHz mono 16-bit WAV (44 KB per second of music) plays in every browser's <audio>,
wandb.Audio takes the file, and TensorBoard's add_audio gets its floats from the standard library's wave
module (read_wav), with no decoder to install. FluidSynth renders to raw float (no clipping however dense the
chords); each file is then peak-normalised to PEAK and its silent tail cut, but never shorter than the MIDI's
last note (evaluation caps a file at EVAL_MAX_SECONDS). Channel 10 is General MIDI percussion in FluidSynth,
and aurl's MIDI writer (pretty_midi) puts drum tracks there, so drums sound as drums.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aurl.console import warn

SAMPLE_RATE = 22050
PEAK = 0.89  # -1 dBFS: every file peaks at the same level, with headroom for players that resample
TAIL_SECONDS = 1.0  # release and reverb kept after the last note, at most
# evaluation's cap on one file (5 MB): an untrained model's sample can spread a few notes over minutes of rests
EVAL_MAX_SECONDS = 120.0
SILENCE = 1e-3  # -60 dB below the peak counts as silence when cutting the tail
GAIN = 0.5  # FluidSynth's master gain (float output: only the relative level matters)
RENDER_TIMEOUT_S = 600
# Debian's GM SoundFonts, best first: fluid-soundfont-gm (145 MB), timgm6mb-soundfont (6 MB), then whatever
# the system names as its default
SOUNDFONTS = ("/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf2/TimGM6mb.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2", "/usr/share/soundfonts/default.sf2")

_warned: set[str] = set()


@dataclass(frozen=True)
class Synthesizer:
    command: str
    soundfont: Path

    def describe(self) -> str:
        return f"FluidSynth with {self.soundfont.name}"


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warn(message)


def find_synthesizer() -> Synthesizer | None:
    """The synthesizer the environment names or the best one installed; None (after one warning) if none."""
    name = os.environ.get("AURL_FLUIDSYNTH", "fluidsynth")
    if name == "off":
        return None
    command = shutil.which(name)
    if command is None:
        _warn_once(f"no synthesizer: {name!r} not found (apt-get install fluidsynth timgm6mb-soundfont, or set "
                   "AURL_FLUIDSYNTH); samples are not rendered to audio")
        return None
    chosen = os.environ.get("AURL_SOUNDFONT")
    fonts = [chosen] if chosen else SOUNDFONTS
    font = next((Path(f) for f in fonts if Path(f).is_file()), None)
    if font is None:
        _warn_once(f"no SoundFont: {chosen if chosen else ', '.join(SOUNDFONTS)} not found (apt-get install "
                   "timgm6mb-soundfont, or set AURL_SOUNDFONT); samples are not rendered to audio")
        return None
    return Synthesizer(command, font)


def midi_seconds(midi_path: str | Path) -> float:
    """Seconds to the MIDI's last note end; 0 for a file without notes (a generated sample may hold none, and
    is rendered as the silence it is rather than failing the evaluation)."""
    from aurl.data.midi_io import MidiReadError, read_midi

    try:
        return read_midi(midi_path).duration
    except MidiReadError:
        return 0.0


def _finish(raw: np.ndarray, min_seconds: float) -> np.ndarray:
    """Interleaved stereo floats -> mono, peak-normalised, the silent tail cut (never before min_seconds)."""
    mono = raw.reshape(-1, 2).mean(axis=1) if raw.size else np.zeros(0, np.float32)
    peak = float(np.abs(mono).max(initial=0.0))
    if peak > 0:
        mono = mono * (PEAK / peak)
    audible = np.flatnonzero(np.abs(mono) > SILENCE * PEAK)
    last = (audible[-1] + 1) if len(audible) else 0
    keep = max(int(np.ceil(min_seconds * SAMPLE_RATE)), min(last, int((min_seconds + TAIL_SECONDS) * SAMPLE_RATE)))
    if keep > len(mono):  # a MIDI that ends in silence: pad rather than cut the music's length short
        mono = np.concatenate([mono, np.zeros(keep - len(mono), mono.dtype)])
    return mono[:keep]


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Mono floats in [-1, 1] as a 16-bit WAV, written atomically."""
    import io

    from aurl.atomic import atomic_write_bytes

    pcm = (np.clip(samples, -1.0, 1.0) * 32767).round().astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """A 16-bit PCM WAV as mono float32 in [-1, 1] and its sample rate (stereo is averaged)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise ValueError(f"{path}: {8 * w.getsampwidth()}-bit WAV, expected 16-bit")
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0
        return data.reshape(-1, w.getnchannels()).mean(axis=1), w.getframerate()


def render_midi(midi_path: str | Path, wav_path: str | Path | None = None, synth: Synthesizer | None = None,
                max_seconds: float | None = None) -> Path | None:
    """Render one MIDI file to WAV (default: beside it, same stem), cut at max_seconds if given. None when no
    synthesizer is found or FluidSynth fails (a one-line warning either way): a caller never fails for want
    of audio."""
    synth = synth or find_synthesizer()
    if synth is None:
        return None
    midi_path = Path(midi_path)
    wav_path = Path(wav_path) if wav_path is not None else midi_path.with_suffix(".wav")
    with tempfile.TemporaryDirectory(prefix="aurl-audio-") as tmp:
        raw_path = Path(tmp) / "out.raw"
        cmd = [synth.command, "-n", "-i", "-q", "-g", str(GAIN), "-r", str(SAMPLE_RATE), "-F", str(raw_path),
               "-T", "raw", "-O", "float", "-E", "little", str(synth.soundfont), str(midi_path)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=RENDER_TIMEOUT_S)
            ok = r.returncode == 0 and raw_path.is_file()
            why = f"exit code {r.returncode}: {(r.stderr or r.stdout).strip()[-300:]}"
        except (OSError, subprocess.TimeoutExpired) as e:
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok:
            warn(f"{midi_path}: FluidSynth failed ({why}); no audio")
            return None
        raw = np.fromfile(raw_path, dtype="<f4")
    cap = math.inf if max_seconds is None else max_seconds
    samples = _finish(raw, min(midi_seconds(midi_path), cap))
    return write_wav(wav_path, samples if max_seconds is None else samples[: int(cap * SAMPLE_RATE)])


def render_all(midi_paths: list[str | Path], max_seconds: float | None = None) -> list[str | None]:
    """render_midi for each file with one synthesizer lookup; the WAV paths (None where none was written)."""
    synth = find_synthesizer()
    if synth is None:
        return [None] * len(midi_paths)
    return [str(w) if (w := render_midi(p, synth=synth, max_seconds=max_seconds)) else None for p in midi_paths]


# ----------------------------------------------------------------------------------------------------------
# The evaluation's listening material
REFERENCE_EXCERPTS = 3  # validation excerpts rendered beside the samples, to compare by ear


def reference_and_audio(out: Path, sample_midis: list[str], excerpts: list, pictures: bool, audio: bool) -> dict:
    """Write a few validation excerpts (spread over the list) as MIDI, and piano rolls if `pictures`, under
    out/reference/; render them and every sample MIDI to WAV if `audio`. The result's "listening" entry:
    {"synthesizer": str | None, "samples": [wav | None], "reference": [{"midi", "audio", "picture"}]}."""
    from aurl.data.midi_io import write_midi

    k = min(REFERENCE_EXCERPTS, len(excerpts))
    picked = [excerpts[i] for i in np.unique(np.linspace(0, len(excerpts) - 1, k).round().astype(int))] if k else []
    reference = []
    for i, score in enumerate(picked):
        path = out / "reference" / f"excerpt_{i:03d}.mid"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_midi(score, path)
        entry = {"midi": str(path), "audio": None, "picture": None}
        if pictures:
            from aurl.evaluate.plots import plot_piano_roll

            entry["picture"] = str(plot_piano_roll(score, path.with_suffix(".png"), f"validation excerpt {i}"))
        reference.append(entry)
    synth = find_synthesizer() if audio else None
    wavs = []
    for midi in list(sample_midis) + [e["midi"] for e in reference]:
        wav = render_midi(midi, synth=synth, max_seconds=EVAL_MAX_SECONDS) if synth else None
        wavs.append(str(wav) if wav else None)
    for entry, wav in zip(reference, wavs[len(sample_midis):], strict=True):
        entry["audio"] = wav
    return {"synthesizer": synth.describe() if synth else None, "samples": wavs[: len(sample_midis)],
            "reference": reference}
