"""Listen and look, end to end: one real tiny stage (`python -m aurl.train`, --tracker both, W&B offline) with its
stage-end evaluation; its sounds and pictures read back from the TensorBoard event files and the offline W&B
run; the run report opened in Debian's headless Chromium from a file:// URL."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import ensure_debian_packages
from media_helpers import AUDIO_PACKAGES, BROWSER_PACKAGES
from run_helpers import REPO, TINY, stage_entry
from test_tracking import wandb_records

from aurl.evaluate import audio
from aurl.evaluate.metrics import METRIC_NAMES

pytestmark = pytest.mark.slow
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AURL_"))}
BASE_ENV.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
SAMPLES = 2  # the tiny config's eval.num_samples
HEARD = SAMPLES + audio.REFERENCE_EXCERPTS  # WAVs per evaluation


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Stage 1 of the tiny config, tracked by TensorBoard and W&B (offline), with FluidSynth installed."""
    ensure_debian_packages(AUDIO_PACKAGES, ["fluidsynth"])
    tmp = tmp_path_factory.mktemp("listen")
    out, wandb_dir = tmp / "run", tmp / "wandb"
    env = dict(BASE_ENV, WANDB_MODE="offline", WANDB_DIR=str(wandb_dir))
    r = subprocess.run([sys.executable, "-m", "aurl.train", "--config", str(TINY), "--output-dir", str(out),
                        "--stage", "1", "--tracker", "both"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in r.stdout
    return out, wandb_dir


def test_tensorboard_gets_audio_pictures_and_the_quality_bar(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = trained
    last_step = stage_entry(out, 1)["step"]
    acc = EventAccumulator(str(out / "logs" / "tensorboard" / "stage1"),
                           size_guidance={"audio": 0, "images": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    want_audio = {f"eval/audio/sample_{i:03d}" for i in range(SAMPLES)} | \
        {f"eval/audio/reference_{i:03d}" for i in range(audio.REFERENCE_EXCERPTS)}
    assert set(tags["audio"]) == want_audio, tags["audio"]
    for tag in want_audio:
        (event,) = acc.Audio(tag)
        assert event.step == last_step and event.sample_rate == audio.SAMPLE_RATE
        name = tag.rsplit("/", 1)[1].replace("reference", "reference/excerpt")
        wav, _ = audio.read_wav(out / "eval" / "stage1" / f"{name}.wav")
        assert event.length_frames == len(wav)  # the whole file, not a clip
    want_images = {f"eval/piano_roll/sample_{i:03d}" for i in range(SAMPLES)} | \
        {"eval/metrics", "eval/rolls_data_vs_samples", "eval/loss_curves"}
    assert set(tags["images"]) == want_images, tags["images"]
    for tag in want_images:
        (event,) = acc.Images(tag)
        assert event.step == last_step and event.width > 100 and event.encoded_image_string[:4] == b"\x89PNG"
    assert {"eval/quality_bar/text_summary", "eval/samples/text_summary"} <= set(tags["tensors"])
    (bar,) = acc.Tensors("eval/quality_bar/text_summary")
    text = bar.tensor_proto.string_val[0].decode()
    assert bar.step == last_step and "all_valid_midi" in text and "| criterion | met |" in text


def test_wandb_offline_run_holds_the_media_and_the_sample_table(trained):
    out, wandb_dir = trained
    entry = stage_entry(out, 1)
    (run_dir,) = (wandb_dir / "wandb").glob(f"offline-run-*-{entry['wandb_run_id']}")  # one W&B run per stage
    media = run_dir / "files" / "media"
    assert len(list((media / "audio").rglob("*.wav"))) == HEARD
    assert len(list((media / "images").rglob("*.png"))) == SAMPLES + 3
    (table_file,) = (media / "table").rglob("*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["sample", "audio", "piano roll", *METRIC_NAMES]
    assert [row[:3] for row in table["data"]] == [[i, "Audio", "Image"] for i in range(SAMPLES)]
    report = json.loads((out / "eval" / "stage1" / "eval.json").read_text())
    for row, metrics in zip(table["data"], report["samples"]["metrics"], strict=True):
        assert row[3:] == pytest.approx([metrics[m] for m in METRIC_NAMES])
    rows = []
    for rec in wandb_records(next(run_dir.glob("run-*.wandb"))):
        if rec.WhichOneof("record_type") == "history":
            row = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in rec.history.item}
            if any(k.startswith("eval/audio/") for k in row):
                rows.append(row)
    assert len(rows) == 1 and rows[0]["step"] == entry["step"]  # at the stage's last optimizer step
    assert rows[0]["eval/audio/sample_000/_type"] == "audio-file"
    assert rows[0]["eval/samples/_type"] == "table-file" and rows[0]["eval/samples/nrows"] == SAMPLES


def test_wandb_disabled_takes_the_media_without_error(trained, tmp_path, monkeypatch, capsys):
    from aurl.evaluate.report import tracker_media
    from aurl.train.tracking import Trackers

    out, _ = trained
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    trackers = Trackers("wandb", tmp_path, 1, "run", "aurl", {}, enabled=True)
    media = tracker_media(json.loads((out / "eval" / "stage1" / "eval.json").read_text()))
    assert len(media.audio) == HEARD and media.tables
    trackers.log_media(media, 6)
    assert len(trackers.trackers) == 1  # not dropped
    trackers.close()
    assert "failed" not in capsys.readouterr().err and not list(tmp_path.rglob("*.wav"))


def chromium(*args: str) -> subprocess.CompletedProcess:
    # root needs --no-sandbox; no GPU here
    return subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
                          capture_output=True, text=True, timeout=120)


# Written into a test copy of the page: every resource error, then what loaded, as JSON in a <pre>
PROBE = """<script>
const aurlErrors = [];
window.addEventListener('error', e => aurlErrors.push(e.message || ('failed: ' + (e.target.src || e.target.currentSrc))), true);
window.addEventListener('load', async () => {
  const imgs = [...document.images], auds = [...document.querySelectorAll('audio')];
  await Promise.all(auds.map(a => a.readyState >= 1 || a.error ? 0 : new Promise(r => {
    a.addEventListener('loadedmetadata', r); a.addEventListener('error', r); })));
  const pre = document.createElement('pre');
  pre.id = 'aurl-probe';
  pre.textContent = JSON.stringify({images: imgs.map(i => i.naturalWidth), audio: auds.map(a => a.duration),
                                    errors: aurlErrors});
  document.body.appendChild(pre);
});
</script>"""


def test_report_opens_in_headless_chromium_with_every_picture_and_sound(trained, tmp_path):
    ensure_debian_packages(BROWSER_PACKAGES, ["chromium"])
    out, _ = trained
    page = (out / "report.html").read_text()
    links = re.findall(r'(?:src|href)="([^"#][^"]*)"', page)
    assert links and all(not re.match(r"[a-z]+:|/", link) for link in links), links  # relative: no network
    assert all((out / link).is_file() for link in links)
    assert page.count("<audio ") == HEARD and "optim:" in page  # the stage config is shown
    probe = out / "report_probe.html"  # beside the report, so the relative paths hold
    probe.write_text(page.replace("<head>", "<head>" + PROBE, 1))
    r = chromium("--enable-logging=stderr", "--v=0", "--virtual-time-budget=30000", "--dump-dom", probe.as_uri())
    probe.unlink()
    found = re.search(r'<pre id="aurl-probe">([^<]*)</pre>', r.stdout)
    assert found, r.stdout[-2000:] + r.stderr[-2000:]
    result = json.loads(found.group(1))
    assert result["errors"] == []
    assert len(result["images"]) == page.count("<img ") and all(w > 0 for w in result["images"]), result
    wavs = sorted((out / "eval" / "stage1").rglob("*.wav"))
    assert len(result["audio"]) == len(wavs) == HEARD
    want = sorted(len(audio.read_wav(w)[0]) / audio.SAMPLE_RATE for w in wavs)
    assert sorted(result["audio"]) == pytest.approx(want, abs=0.01), result  # the browser decodes every file
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line]
    assert console == [], console
    shot = tmp_path / "report.png"
    r = chromium("--window-size=1280,2400", f"--screenshot={shot}", (out / "report.html").as_uri())
    assert shot.is_file(), r.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (2400, 1280)
    # a blank page is one colour (std 0); measured on this report: std 33, 4.4 % of pixels darker than 200
    assert pixels.std() > 15 and (pixels < 200).mean() > 0.02, (pixels.std(), (pixels < 200).mean())


def test_status_prints_the_report_and_evaluate_rewrites_it(trained, tmp_path, capsys):
    from aurl.evaluate.__main__ import main as evaluate_main
    from aurl.train.__main__ import main as train_main

    out, _ = trained
    run = tmp_path / "run"
    shutil.copytree(out, run, ignore=shutil.ignore_patterns("cache", "*.pt", "step_*", "tensorboard"))
    (run / "report.html").unlink()
    assert train_main(["--status", "--output-dir", str(run)]) == 0
    assert f"report: none yet (python -m aurl.evaluate --report --run-dir {run})" in capsys.readouterr().out
    assert evaluate_main(["--report", "--run-dir", str(run)]) == 0
    assert (run / "report.html").is_file() and "Evaluation stage1" in (run / "report.html").read_text()
    assert train_main(["--status", "--output-dir", str(run)]) == 0
    assert f"report: {run / 'report.html'}" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert evaluate_main(["--report", "--run-dir", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "nothing to report" in err and str(empty) in err and not list(empty.iterdir())
    with pytest.raises(SystemExit) as e:
        evaluate_main([])
    assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err
