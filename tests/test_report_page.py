"""aurl.evaluate.report on a run folder built here (no training, fast). (A real run, its trackers and the page in
Chromium: test_report.py.)"""

from __future__ import annotations

import json
import re

from aurl.evaluate.report import per_sample, write_report


def _evaluation(run, name: str, step: int, recorded_root: str, listening: bool, bar: dict) -> None:
    """RUN/eval/<name>/: eval.json recording paths under recorded_root (where the run was when evaluated), and
    the two sample MIDI files (and WAVs if `listening`) it lists, in the folder itself."""
    folder = run / "eval" / name
    folder.mkdir(parents=True)
    files = [f"{recorded_root}/eval/{name}/sample_{i:03d}.mid" for i in range(2)]
    result = {"checkpoint": f"{recorded_root}/checkpoints/best_model.pt", "mode": "transformer", "step": step,
              "validation": {"kind": "exact", "nll_per_token": 2.0 + step / 1000, "nll_per_note": 5.0},
              "samples": {"files": files, "metrics": [{"polyphony": 1.5}, {"polyphony": 2.5}]},
              "quality_bar": bar}
    for f in files:
        (folder / f.rsplit("/", 1)[1]).write_bytes(b"MThd")
    if listening:
        result["listening"] = {"synthesizer": "FluidSynth with X.sf2",
                               "samples": [f.replace(".mid", ".wav") for f in files], "reference": []}
        for f in files:
            (folder / f.rsplit("/", 1)[1].replace(".mid", ".wav")).write_bytes(b"RIFF")
    (folder / "eval.json").write_text(json.dumps(result))


def test_an_evaluation_without_a_quality_bar_sits_beside_one_with_it(tmp_path):
    """An evaluation run with num_samples 0 (the validation likelihood only) has no quality bar; the page's
    at-a-glance table shows a dash under each criterion the other evaluations have, instead of failing on the
    missing key (it raised KeyError: 'all_valid_midi')."""
    run = tmp_path / "run"
    _evaluation(run, "stage1", 1, str(run), listening=True, bar={"all_valid_midi": True, "zero_grammar_errors": False})
    _evaluation(run, "stage2", 2, str(run), listening=True, bar={})
    page = write_report(run).read_text()
    rows = {name: re.search(rf'<a href="#{name}">.*?</tr>', page).group(0) for name in ("stage1", "stage2")}
    assert rows["stage1"].endswith('<td><span class="yes">yes</span></td><td><span class="no">NO</span></td></tr>')
    assert rows["stage2"].endswith("<td>-</td><td>-</td></tr>")


def test_the_page_orders_stages_by_number_and_links_the_files_beside_each_report(tmp_path):
    """Stages in number order (stage2 before stage10, other names after); the sample files linked relative to the
    page from each report's own folder, though the reports recorded where the run was when evaluated; a sample
    without audio says so; a criterion an evaluation lacks is a dash."""
    run = tmp_path / "run"
    moved_from = "/old/place/run"  # the run folder was copied here after it was evaluated
    _evaluation(run, "stage10", 10, moved_from, listening=True, bar={"all_valid_midi": True})
    _evaluation(run, "stage2", 2, moved_from, listening=False, bar={"all_valid_midi": False, "extra": True})
    _evaluation(run, "adhoc", 5, moved_from, listening=True, bar={})
    page = write_report(run).read_text()
    sections = re.findall(r'<h2 id="([^"]+)">', page)
    assert sections == ["stage2", "stage10", "adhoc"]
    glance = re.findall(r'<a href="#([^"]+)">', page)
    assert glance == sections
    links = re.findall(r'href="([^"#][^"]*)"', page) + re.findall(r'src="([^"]*)"', page)
    midis = [link for link in links if link.endswith(".mid")]
    wavs = [link for link in links if link.endswith(".wav")]
    assert len(midis) == 6 and len(wavs) == 4  # stage2 was not rendered: its two cards say so
    assert all(not link.startswith(("/", "old")) and (run / link).is_file() for link in midis + wavs), links
    assert page.count("no audio (no synthesizer when evaluated") == 2
    # stage10 and adhoc lack "extra", adhoc all_valid_midi too: a dash, not a "NO"
    rows = re.findall(r"<tr><td><a href=\"#(\w+)\">.*?</tr>", page)
    assert rows == sections
    cells = {name: re.search(rf'<a href="#{name}">.*?</tr>', page).group(0) for name in sections}
    assert cells["stage2"].count('class="no"') == 1 and cells["stage2"].count('class="yes"') == 1
    assert cells["stage10"].endswith("<td>-</td></tr>") and cells["adhoc"].count("<td>-</td>") == 2


def test_per_sample_gives_every_file_even_without_listening_or_metrics():
    result = {"samples": {"files": ["a.mid", "b.mid", "c.mid"], "metrics": [{"polyphony": 1.0}]}}
    assert per_sample(result) == [("a.mid", None, {"polyphony": 1.0}), ("b.mid", None, {}), ("c.mid", None, {})]
    result["listening"] = {"samples": ["a.wav", None, "c.wav"]}
    assert [wav for _, wav, _ in per_sample(result)] == ["a.wav", None, "c.wav"]
    assert per_sample({}) == []


def test_tracker_media_marks_a_metric_a_sample_lacks_as_nan_not_zero(tmp_path):
    """The trackers' sample table: one row per sample with its sound and piano roll where they exist, and its
    metrics in METRIC_NAMES order; an undefined metric (None in eval.json, e.g. groove consistency of a piece
    without beats) is NaN, which trackers show as missing, never 0, which reads as a measured value."""
    import math

    from aurl.evaluate.metrics import METRIC_NAMES
    from aurl.evaluate.report import tracker_media

    (tmp_path / "sample_000.png").write_bytes(b"png")
    (tmp_path / "sample_000.wav").write_bytes(b"RIFF")
    metrics = [{name: 0.5 for name in METRIC_NAMES} | {"groove_consistency": None}, {}]
    result = {"samples": {"files": [str(tmp_path / "sample_000.mid"), str(tmp_path / "sample_001.mid")],
                          "metrics": metrics},
              "listening": {"samples": [str(tmp_path / "sample_000.wav"), None]},
              "quality_bar": {"all_valid_midi": True}}
    media = tracker_media(result)
    columns, rows = media.tables["eval/samples"]
    assert columns[:3] == ["sample", "audio", "piano roll"] and columns[3:] == list(METRIC_NAMES)
    assert len(rows) == 2 and rows[0][:3] == [0, tmp_path / "sample_000.wav", tmp_path / "sample_000.png"]
    assert rows[1][:3] == [1, None, None]
    first = dict(zip(METRIC_NAMES, rows[0][3:], strict=True))
    assert math.isnan(first.pop("groove_consistency")) and set(first.values()) == {0.5}
    assert all(math.isnan(v) for v in rows[1][3:]) and len(rows[1][3:]) == len(METRIC_NAMES) == 7
    assert list(media.audio) == ["eval/audio/sample_000"] and list(media.images) == ["eval/piano_roll/sample_000"]
    assert "| all_valid_midi | yes |" in media.text["eval/quality_bar"]
