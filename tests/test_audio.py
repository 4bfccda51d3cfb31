"""Samples as sound, for real: Debian's FluidSynth with a GM SoundFont renders MIDI built here; the WAV is read
back with numpy (loud where notes sound, silent before them, as long as the MIDI; drums sound as drums).
Without a synthesizer, evaluation warns once and goes on."""

from __future__ import annotations

import mido
import numpy as np
import pytest
from conftest import ensure_debian_packages
from media_helpers import AUDIO_PACKAGES, build_tiny_run
from midi_factory import make_pretty_midi

from aurl.data.midi_io import Note, Score, write_midi
from aurl.evaluate import audio
from aurl.evaluate.config import EvalConfig
from aurl.evaluate.core import evaluate_checkpoint


@pytest.fixture(scope="module")
def synth():
    ensure_debian_packages(AUDIO_PACKAGES, ["fluidsynth"])
    found = audio.find_synthesizer()
    assert found is not None, "fluidsynth is installed but no SoundFont was found"
    return found


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return build_tiny_run(tmp_path_factory.mktemp("run"))


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x)))) if len(x) else 0.0


def test_render_is_audible_where_the_notes_are_and_as_long_as_the_midi(synth, tmp_path):
    # a rest, two notes, a rest, a last note ending at 4.5 s
    midi = tmp_path / "tune.mid"
    make_pretty_midi([(60, 0.5, 1.5, 100), (64, 1.5, 2.5, 90), (67, 4.0, 4.5, 100)]).write(str(midi))
    wav = audio.render_midi(midi, synth=synth)
    assert wav == midi.with_suffix(".wav")
    x, rate = audio.read_wav(wav)
    assert rate == audio.SAMPLE_RATE
    seconds = len(x) / rate
    # FluidSynth renders ~3 s of silence after the last note (measured 7.55 s for a 4.5 s piece): cut to the
    # audible release, at most TAIL_SECONDS past the last note, never before it
    assert 4.5 <= seconds <= 4.5 + audio.TAIL_SECONDS, seconds
    part = {name: x[int(a * rate):int(b * rate)] for name, (a, b) in
            {"before": (0.0, 0.45), "notes": (0.55, 2.4), "last": (4.0, 4.5)}.items()}
    # measured (TimGM6mb, peak normalised to 0.89): before 0.0 (digital silence), notes 0.19, last note 0.25
    assert rms(part["before"]) < 1e-3, rms(part["before"])
    assert rms(part["notes"]) > 0.05 and rms(part["last"]) > 0.05, {k: rms(v) for k, v in part.items()}
    assert np.abs(x).max() == pytest.approx(audio.PEAK, abs=1e-3)


def spectral_flatness(x: np.ndarray) -> float:
    """Geometric over arithmetic mean of the power spectrum: ~0 for a tone, towards 1 for noise."""
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2 + 1e-20
    return float(np.exp(np.mean(np.log(power))) / np.mean(power))


def test_drums_are_written_on_channel_10_and_sound_as_drums(synth, tmp_path):
    hits = [(38, 0.0, 0.2), (42, 0.5, 0.7), (38, 1.0, 1.2)]  # GM snare, closed hi-hat, snare
    flat = {}
    for kind, drum in (("drums", True), ("piano", False)):
        path = tmp_path / f"{kind}.mid"
        write_midi(Score.from_notes([Note(p, s, e, 100, 0, drum) for p, s, e in hits]), path)  # aurl's writer
        channels = {m.channel for tr in mido.MidiFile(path).tracks for m in tr if m.type == "note_on"}
        assert channels == ({9} if drum else {0}), (kind, channels)
        x, rate = audio.read_wav(audio.render_midi(path, synth=synth))
        flat[kind] = spectral_flatness(x[: int(0.2 * rate)])  # the first snare hit
    # measured with TimGM6mb: the snare on channel 10 0.09 (noise), the same key as a piano note 5e-7 (a tone)
    assert flat["drums"] > 0.01 and flat["piano"] < 1e-3, flat


def test_evaluation_renders_every_sample_and_reference_excerpts(synth, tiny_run, tmp_path):
    cfg = EvalConfig(num_samples=2, length=24, seed=1, max_val_tokens=200, pictures=False)  # test_report: PNGs
    r = evaluate_checkpoint(tiny_run / "checkpoints" / "best_model.pt", tiny_run / "cache", cfg, out_dir=tmp_path)
    listening = r["listening"]
    assert listening["synthesizer"] == synth.describe()
    assert listening["samples"] == [str(tmp_path / f"sample_{i:03d}.wav") for i in range(2)]
    ref = listening["reference"]
    assert len(ref) == audio.REFERENCE_EXCERPTS
    wavs = listening["samples"] + [e["audio"] for e in ref]
    midis = r["samples"]["files"] + [e["midi"] for e in ref]
    compared = 0
    for midi, wav in zip(midis, wavs, strict=True):
        x, rate = audio.read_wav(wav)
        want = min(audio.midi_seconds(midi), audio.EVAL_MAX_SECONDS)
        assert want <= len(x) / rate <= want + audio.TAIL_SECONDS, (wav, len(x) / rate, want)
        assert rms(x) > 1e-3, wav
        compared += 1
    assert compared == 5
    assert r["timings"]["listening_s"] > 0


def test_evaluation_cuts_every_file_at_its_cap(synth, tiny_run, tmp_path, monkeypatch):
    """Evaluation caps each WAV at EVAL_MAX_SECONDS (lowered here to 0.5 s): a file whose MIDI lasts longer
    than the cap plus the release tail is exactly 0.5 s long, not 0.5 s plus the tail, nor the whole MIDI.
    Measured MIDI lengths here: sample 52 s, reference excerpts 1.25 s, 2.0 s and 1.75 s: 3 files capped."""
    monkeypatch.setattr(audio, "EVAL_MAX_SECONDS", 0.5)
    cfg = EvalConfig(num_samples=1, length=24, seed=1, max_val_tokens=100, pictures=False)
    r = evaluate_checkpoint(tiny_run / "checkpoints" / "best_model.pt", tiny_run / "cache", cfg, out_dir=tmp_path)
    wavs = r["listening"]["samples"] + [e["audio"] for e in r["listening"]["reference"]]
    midis = r["samples"]["files"] + [e["midi"] for e in r["listening"]["reference"]]
    capped = 0
    for midi, wav in zip(midis, wavs, strict=True):
        x, rate = audio.read_wav(wav)
        if audio.midi_seconds(midi) > 0.5 + audio.TAIL_SECONDS:  # uncut, it would be longer than cap + tail
            assert len(x) == rate // 2, (wav, len(x) / rate)
            capped += 1
    assert capped == 3, capped


def test_without_a_synthesizer_evaluation_warns_once_and_goes_on(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("AURL_FLUIDSYNTH", str(tmp_path / "no-such-fluidsynth"))
    monkeypatch.setattr(audio, "_warned", set())
    cfg = EvalConfig(num_samples=1, length=16, max_val_tokens=100, pictures=False)
    for out in ("a", "b"):
        r = evaluate_checkpoint(tiny_run / "checkpoints" / "best_model.pt", tiny_run / "cache", cfg,
                                out_dir=tmp_path / out)
        assert r["listening"]["synthesizer"] is None and r["listening"]["samples"] == [None]
        assert (tmp_path / out / "sample_000.mid").is_file() and (tmp_path / out / "eval.json").is_file()
        assert (tmp_path / out / "reference" / "excerpt_000.mid").is_file()
    assert not list(tmp_path.rglob("*.wav"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "no synthesizer" in line]
    assert len(warnings) == 1 and "no-such-fluidsynth" in warnings[0] and "AURL_FLUIDSYNTH" in warnings[0]


def test_no_audio_flag_renders_nothing(synth, tiny_run, tmp_path):
    from aurl.evaluate.__main__ import main

    assert main(["--checkpoint", str(tiny_run / "checkpoints" / "best_model.pt"), "--num-samples", "1", "--length",
                 "8", "--max-val-tokens", "50", "--no-pictures", "--no-audio", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "sample_000.mid").is_file() and (tmp_path / "reference" / "excerpt_000.mid").is_file()
    assert not list(tmp_path.rglob("*.wav"))
    assert not list(tmp_path.rglob("*.png"))  # --no-pictures: the reference excerpts get no piano roll either


def test_missing_soundfont_and_off_render_nothing(tmp_path, monkeypatch, capsys):
    midi = tmp_path / "a.mid"
    make_pretty_midi([(60, 0.0, 0.5, 100)]).write(str(midi))
    monkeypatch.setattr(audio, "_warned", set())
    monkeypatch.setenv("AURL_FLUIDSYNTH", "off")
    assert audio.render_midi(midi) is None and capsys.readouterr().err == ""  # off: silently
    if audio.shutil.which("fluidsynth"):
        monkeypatch.setenv("AURL_FLUIDSYNTH", "fluidsynth")
        monkeypatch.setenv("AURL_SOUNDFONT", str(tmp_path / "none.sf2"))
        assert audio.render_midi(midi) is None
        assert "no SoundFont" in capsys.readouterr().err
    assert not midi.with_suffix(".wav").exists()


def test_generate_audio_writes_a_wav_beside_each_midi(synth, tiny_run, tmp_path):
    from aurl.generate import main

    out = tmp_path / "samples"
    assert main(["--checkpoint", str(tiny_run / "checkpoints" / "best_model.pt"), "--num", "2", "--length", "16",
                 "--out", str(out), "--audio"]) == 0
    midis = sorted(out.glob("*.mid"))
    assert len(midis) == 2 and sorted(out.glob("*.wav")) == [m.with_suffix(".wav") for m in midis]
    for m in midis:
        x, rate = audio.read_wav(m.with_suffix(".wav"))
        assert len(x) / rate >= audio.midi_seconds(m) and rms(x) > 1e-3


def test_finish_averages_the_channels_normalises_and_cuts_at_minus_60_db():
    """_finish on FluidSynth's interleaved stereo floats, built here: the channels are averaged (left-only and
    right-only halves both sound), the peak becomes PEAK, the tail is cut after the last sample above -60 dB of
    the peak (1.06e-3 of the peak is kept, 0.94e-3 is not), TAIL_SECONDS past min_seconds at most, and a
    render shorter than min_seconds is padded with silence."""
    rate = audio.SAMPLE_RATE
    left, right = np.zeros(rate), np.zeros(rate)  # 1 s
    left[:100], right[100:200] = 1.0, 1.0
    left[1000], left[2000] = 1.06e-3, 0.94e-3  # halved by the channel mean, as the peak (0.5) is
    out = audio._finish(np.stack([left, right], axis=1).reshape(-1).astype(np.float32), min_seconds=0.0)
    assert len(out) == 1001
    assert np.allclose(out[:200], audio.PEAK) and out[1000] == pytest.approx(1.06e-3 * audio.PEAK)
    padded = audio._finish(np.stack([left, right], axis=1).reshape(-1).astype(np.float32), min_seconds=1.5)
    assert len(padded) == int(1.5 * rate) and not padded[rate:].any()
    long = np.ones(4 * rate * 2, np.float32)  # 4 s of sound, cut at 1 s + TAIL_SECONDS
    assert len(audio._finish(long, min_seconds=1.0)) == int((1.0 + audio.TAIL_SECONDS) * rate)


def test_wav_samples_are_clipped_to_full_scale_and_read_back_in_it(tmp_path):
    """write_wav clips to [-1, 1] (1.5 would wrap around to a negative 16-bit value); read_wav maps the 16-bit
    range onto [-1, 1) (-32768 reads as exactly -1)."""
    x, rate = audio.read_wav(audio.write_wav(tmp_path / "a.wav", np.array([1.5, -1.5, 0.5, -1.0])))
    assert rate == audio.SAMPLE_RATE
    assert np.allclose(x, [32767 / 32768, -32767 / 32768, 16384 / 32768, -32767 / 32768], atol=0)
    import wave

    with wave.open(str(tmp_path / "b.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(np.array([-32768, -32768, 32767, 0], "<i2").tobytes())
    x, rate = audio.read_wav(tmp_path / "b.wav")
    assert rate == 8000 and x.tolist() == [-1.0, 32767 / 65536]


def test_midi_seconds_of_a_file_without_notes_or_unreadable_is_zero(tmp_path):
    write_midi(Score(), tmp_path / "empty.mid")
    (tmp_path / "junk.mid").write_bytes(b"not a midi file")
    make_pretty_midi([(60, 0.5, 2.25, 100)]).write(str(tmp_path / "one.mid"))
    assert [audio.midi_seconds(tmp_path / n) for n in ("empty.mid", "junk.mid", "one.mid")] == [0.0, 0.0, 2.25]


def test_a_synthesizer_that_fails_gives_no_audio_and_one_warning_naming_the_file(tmp_path, capsys):
    """render_midi never fails its caller: a synthesizer command that exits non-zero (here the real `false`)
    returns None with a warning naming the MIDI file and the exit code, and writes no WAV."""
    import shutil
    from pathlib import Path

    midi = tmp_path / "a.mid"
    make_pretty_midi([(60, 0.0, 0.5, 100)]).write(str(midi))
    font = tmp_path / "font.sf2"
    font.write_bytes(b"")
    assert audio.render_midi(midi, synth=audio.Synthesizer(shutil.which("false"), Path(font))) is None
    err = [line for line in capsys.readouterr().err.splitlines() if "FluidSynth failed" in line]
    assert len(err) == 1 and str(midi) in err[0] and "exit code 1" in err[0]
    assert not midi.with_suffix(".wav").exists()
