"""aurl.evaluate.status: the evaluation reports of a run folder, oldest first by modification time (not by
name), a report cut short left out, pictures found beside a report that was moved."""

from __future__ import annotations

import json
import os

from aurl.evaluate.status import eval_reports, latest_eval


def _report(run, name: str, mtime: int, text: str) -> str:
    path = run / "eval" / name / "eval.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    os.utime(path, (mtime, mtime))
    return str(path)


def test_reports_oldest_first_unreadable_left_out_pictures_found(tmp_path):
    """Mutations: sorted by path instead of modification time -> fails (the names sort the other way); the
    pictures a report lists ignored (always looked for beside it) -> fails (stage2's are in their own folder)."""
    assert eval_reports(tmp_path) == [] and latest_eval(tmp_path) is None
    moved = {"pictures": ["/elsewhere/metrics.png"], "validation": {"nll_per_token": 2.5, "kind": "exact"},
             "quality_bar": {"all_valid_midi": True}, "stage": "stage1", "step": 4}
    old = _report(tmp_path, "zz_stage1", 1_000, json.dumps(moved))
    (tmp_path / "eval" / "zz_stage1" / "metrics.png").write_bytes(b"png")
    _report(tmp_path, "mm_cut_short", 1_500, '{"validation": {"nll_per')  # a crash cut it short
    (tmp_path / "pictures").mkdir()
    (tmp_path / "pictures" / "piano_roll.png").write_bytes(b"png")
    listed = [str(tmp_path / "pictures" / "piano_roll.png"), str(tmp_path / "pictures" / "deleted.png")]
    new = _report(tmp_path, "aa_stage2", 2_000, json.dumps({"stage": "stage2", "step": 9, "pictures": listed}))
    reports = eval_reports(tmp_path)
    assert [r["json"] for r in reports] == [old, new]
    assert reports[0] == {"json": old, "dir": str(tmp_path / "eval" / "zz_stage1"),
                          "pictures": [str(tmp_path / "eval" / "zz_stage1" / "metrics.png")],
                          "nll_per_token": 2.5, "nll_kind": "exact", "quality_bar": {"all_valid_midi": True},
                          "stage": "stage1", "step": 4}
    assert reports[1]["pictures"] == listed[:1] and reports[1]["nll_per_token"] is None
    assert reports[1]["quality_bar"] == {} and reports[1]["nll_kind"] is None  # absent: empty, not None
    assert latest_eval(tmp_path) == reports[1]
