"""What the trainer's --status shows of evaluation: the latest report and its pictures in a run folder.

    from aurl.evaluate.status import latest_eval
    info = latest_eval("outputs")   # None before the first evaluation
    if info: print(info["dir"], *info["pictures"])

Reads files only (no torch, no matplotlib).
"""

from __future__ import annotations

import json
from pathlib import Path


def eval_reports(run_dir: str | Path) -> list[dict]:
    """Every readable RUN/eval/*/eval.json summarised, oldest first (by modification time).

    Each: {"json": path, "dir": folder, "pictures": [PNG paths that exist], "nll_per_token": float | None,
    "nll_kind": "exact" | "elbo_bound" | None, "quality_bar": {name: bool}, "stage": ..., "step": ...}.
    A report that cannot be read (cut short by a crash) is left out.
    """
    out = []
    for path in sorted(Path(run_dir).glob("eval/*/eval.json"), key=lambda p: p.stat().st_mtime):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        pictures = [p for p in r.get("pictures") or [] if Path(p).is_file()]
        if not pictures:  # the report was moved with its folder: look next to it
            pictures = [str(p) for p in sorted(path.parent.glob("*.png"))]
        validation = r.get("validation") or {}
        out.append({
            "json": str(path),
            "dir": str(path.parent),
            "pictures": pictures,
            "nll_per_token": validation.get("nll_per_token"),
            "nll_kind": validation.get("kind"),
            "quality_bar": r.get("quality_bar") or {},
            "stage": r.get("stage"),
            "step": r.get("step"),
        })
    return out


def latest_eval(run_dir: str | Path) -> dict | None:
    """The newest report of eval_reports(run_dir), or None before the first evaluation."""
    reports = eval_reports(run_dir)
    return reports[-1] if reports else None
