"""What the trainer's --status shows of evaluation: the latest report and its pictures in a run folder.

    from aurl.evaluate.status import latest_eval
    info = latest_eval("outputs")   # None before the first evaluation
    if info: print(info["dir"], *info["pictures"])

Reads files only (no torch, no matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path


def latest_eval(run_dir: str | Path) -> dict | None:
    """The newest RUN/eval/*/eval.json (by modification time) summarised, or None when there is none.

    -> {"json": path, "dir": folder, "pictures": [PNG paths that exist], "nll_per_token": float | None,
        "quality_bar": {name: bool}, "stage": ..., "step": ...}. A report that cannot be read (cut short by a
    crash) is skipped for the next newest.
    """
    reports = sorted(Path(run_dir).glob("eval/*/eval.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in reports:
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        pictures = [p for p in r.get("pictures") or [] if Path(p).is_file()]
        if not pictures:  # the report was moved with its folder: look next to it
            pictures = [str(p) for p in sorted(path.parent.glob("*.png"))]
        return {
            "json": str(path),
            "dir": str(path.parent),
            "pictures": pictures,
            "nll_per_token": (r.get("validation") or {}).get("nll_per_token"),
            "quality_bar": r.get("quality_bar") or {},
            "stage": r.get("stage"),
            "step": r.get("step"),
        }
    return None
