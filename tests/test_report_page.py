"""aurl.evaluate.report on a run folder built here (no training, fast). (A real run, its trackers and the page in
Chromium: test_report.py.)"""

from __future__ import annotations

import json
import re

from aurl.evaluate.report import write_report


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
