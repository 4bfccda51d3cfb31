"""Pictures: loss curves of all stages on one axis, and piano rolls of note lists (PNG).

matplotlib is imported inside the functions (``import aurl.evaluate`` stays light) and only through its
object API with the Agg canvas: no pyplot, no global backend switch, safe in a headless job.

Loss records are dicts ``{"stage": str|int, "step": int, "split": "train"|"val", "loss": float}``
(optionally ``"metric"``: which loss, default "loss"). They come from a JSONL file with one record per
line, or from TensorBoard event files under ``<dir>/stageN/``: scalar tags with a ``train``/``val`` path
part and a loss-like rest (``loss``, ``recon``, ``nll``), e.g. ``train/loss``, ``loss/val``; the rest of the
tag is the record's metric. See load_loss_records.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from aurl.atomic import atomic_write_bytes

_SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                  "eval": "val"}
_LOSS_WORDS = ("loss", "recon", "nll")  # scalar tags drawn as loss curves


# ----------------------------------------------------------------------------------------------------------
# Loss records
def _stage_key(stage) -> tuple:
    """Order stages naturally: stage1 < stage2 < stage10, numbers before names."""
    m = re.search(r"(\d+)", str(stage))
    return (0, int(m.group(1)), str(stage)) if m else (1, 0, str(stage))


def read_jsonl_records(path: str | Path) -> list[dict]:
    """Loss records from a JSONL file (blank lines and records without a finite loss skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash mid-write
        if not isinstance(r, dict) or not {"stage", "step", "split", "loss"} <= set(r):
            continue
        try:
            loss = float(r["loss"])
        except (TypeError, ValueError):
            continue
        if math.isfinite(loss):
            out.append({**r, "loss": loss, "step": int(r["step"])})
            recon = r.get("recon")
            if "metric" not in r and isinstance(recon, (int, float)) and math.isfinite(recon):
                # the LM term alone as its own record: comparable with the validation NLL in every stage
                out.append({"stage": r["stage"], "step": int(r["step"]), "split": r["split"], "loss": float(recon),
                            "metric": "recon"})
    return out


def read_tensorboard_records(log_dir: str | Path) -> list[dict]:
    """Loss records from TensorBoard event files: one stage per sub-folder (its name is the stage)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = Path(log_dir)
    runs = sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")})
    out = []
    for run in runs:
        stage = run.relative_to(log_dir).parts[0] if run != log_dir else log_dir.name
        acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            parts = tag.split("/")
            lower = [p.lower() for p in parts]
            split = next((_SPLIT_ALIASES[p] for p in lower if p in _SPLIT_ALIASES), None)
            rest = [p for p, low in zip(parts, lower, strict=True) if low not in _SPLIT_ALIASES]
            if split is None or not rest or not any(w in "/".join(rest).lower() for w in _LOSS_WORDS):
                continue
            metric = "/".join(rest)
            for ev in acc.Scalars(tag):
                if math.isfinite(ev.value):
                    out.append({"stage": stage, "step": int(ev.step), "split": split, "loss": float(ev.value),
                                "metric": metric})
    return out


def load_loss_records(source: str | Path) -> list[dict]:
    """Records from a .jsonl file or a TensorBoard log folder (e.g. outputs/logs/tensorboard)."""
    source = Path(source)
    if source.is_file():
        return read_jsonl_records(source)
    if source.is_dir():
        return read_tensorboard_records(source)
    return []


def stage_offsets(records: Iterable[dict]) -> dict:
    """What to add to each stage's steps to put all stages on one axis, in natural stage order, each after
    the last step of the previous one: a stage counting its steps from 0 is shifted; a stage whose steps
    already continue the previous one's (a global step counter) is left where it is."""
    first: dict = {}
    last: dict = defaultdict(int)
    for r in records:
        step = int(r["step"])
        first[r["stage"]] = min(first.get(r["stage"], step), step)
        last[r["stage"]] = max(last[r["stage"]], step)
    offsets, x = {}, 0
    for stage in sorted(last, key=_stage_key):
        offsets[stage] = max(0, x - first[stage])
        x = offsets[stage] + last[stage] + 1
    return offsets


# ----------------------------------------------------------------------------------------------------------
# Figures
def _save(fig, path: str | Path, dpi: int) -> Path:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def plot_loss_curves(records: Sequence[dict], path: str | Path, title: str = "aurl training loss",
                     metric: str | None = None, dpi: int = 110) -> Path:
    """Train and validation loss of every stage on one step axis (stage boundaries marked) -> PNG.

    metric: which loss to draw when records carry several. Default: per stage and split, "recon" where
    there are such records, else "loss". Why: in the vae stages the training loss adds the KL and
    adversarial terms, while the validation loss is the reconstruction NLL; recon is the like-for-like
    curve (and equals "loss" in the transformer stage). A run with no records yet still gets a picture
    that says so.
    """
    from matplotlib.figure import Figure

    records = list(records)
    if metric is not None:
        records = [r for r in records if r.get("metric", "loss") == metric]
    else:
        has_recon = {(r["stage"], r["split"]) for r in records if r.get("metric") == "recon"}
        records = [r for r in records
                   if r.get("metric", "loss") == ("recon" if (r["stage"], r["split"]) in has_recon else "loss")]
    offsets = stage_offsets(records)
    fig = Figure(figsize=(9, 4.5))
    ax = fig.add_subplot(1, 1, 1)
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, stage in enumerate(sorted(offsets, key=_stage_key)):
        color = colors[i % len(colors)]
        for split, style in (("train", dict(lw=1.0, alpha=0.7)), ("val", dict(lw=2.0, marker="o", ms=3))):
            # a step logged twice (replayed after a resume): the later record wins
            by_step = {r["step"]: r["loss"] for r in records if r["stage"] == stage and r["split"] == split}
            pts = sorted((offsets[stage] + step, loss) for step, loss in by_step.items())
            if pts:
                name = f"stage {stage}" if str(stage).isdigit() else str(stage)  # the trainer logs stage numbers
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, label=f"{name} {split}",
                        ls="-" if split == "train" else "--", **style)
        start = offsets[stage] + min(r["step"] for r in records if r["stage"] == stage)
        if start > 0:
            ax.axvline(start - 0.5, color="grey", lw=0.8, ls=":")
    if not records:
        ax.text(0.5, 0.5, "no loss records yet", ha="center", va="center", transform=ax.transAxes)
    else:
        ax.legend(fontsize=8, ncol=2)
    ax.set_xlabel("optimizer step (stages back to back)")
    ax.set_ylabel("NLL (nats/token)" if metric in (None, "loss", "recon") else metric)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, dpi)


def _draw_roll(ax, notes, title: str) -> None:
    from matplotlib.collections import PolyCollection

    from aurl.evaluate.metrics import as_piece

    piece = as_piece(notes)
    verts = [[(s, p - 0.4), (e, p - 0.4), (e, p + 0.4), (s, p + 0.4)]
             for p, s, e in zip(piece.pitch.tolist(), piece.start.tolist(), piece.end.tolist(), strict=True)]
    ax.add_collection(PolyCollection(verts, facecolors="tab:blue", edgecolors="navy", linewidths=0.3))
    if piece.num_notes:
        ax.set_xlim(0, max(piece.duration, 1e-3))
        ax.set_ylim(piece.pitch.min() - 2, piece.pitch.max() + 2)
    else:
        ax.text(0.5, 0.5, "no notes", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("MIDI pitch")
    ax.grid(alpha=0.25)


def plot_piano_roll(notes, path: str | Path, title: str = "", dpi: int = 110) -> Path:
    """One piano roll (time in seconds vs pitch) of a Score or note list -> PNG."""
    return plot_piano_rolls([notes], path, [title], dpi=dpi)


def plot_piano_rolls(pieces: Sequence, path: str | Path, titles: Sequence[str] | None = None,
                     dpi: int = 110) -> Path:
    """Piano rolls of several pieces stacked in one PNG (e.g. data vs samples)."""
    from matplotlib.figure import Figure

    pieces = list(pieces)
    assert pieces, "no piece to draw"
    titles = list(titles or [""] * len(pieces))
    fig = Figure(figsize=(10, 2.4 * len(pieces) + 0.4))
    for i, (notes, title) in enumerate(zip(pieces, titles, strict=True)):
        _draw_roll(fig.add_subplot(len(pieces), 1, i + 1), notes, title)
    fig.axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_metric_distributions(data: Sequence[dict], samples: Sequence[dict], path: str | Path,
                              overlaps: dict | None = None, dpi: int = 110) -> Path:
    """One histogram per music metric: the data's per-piece values against the samples' -> PNG.

    data / samples: per-piece metric dicts (aurl.evaluate.metrics.compute_metrics); overlaps: the
    {name: {"overlap": float}} of compare_metrics, shown in each title.
    """
    import numpy as np
    from matplotlib.figure import Figure

    from aurl.evaluate.metrics import METRIC_NAMES

    fig = Figure(figsize=(12, 6))
    for i, name in enumerate(METRIC_NAMES):
        ax = fig.add_subplot(2, 4, i + 1)
        d = np.array([m[name] for m in data], dtype=float)
        s = np.array([m[name] for m in samples], dtype=float)
        d, s = d[np.isfinite(d)], s[np.isfinite(s)]
        both = np.concatenate([d, s])
        if len(both):
            lo, hi = float(both.min()), float(both.max())
            bins = np.linspace(lo - 0.5, hi + 0.5, 21) if hi - lo < 1e-9 else np.linspace(lo, hi, 21)
            for values, label, color in ((d, "data", "tab:blue"), (s, "samples", "tab:orange")):
                if len(values):
                    ax.hist(values, bins=bins, density=True, alpha=0.5, label=f"{label} ({len(values)})",
                            color=color)
        ov = (overlaps or {}).get(name, {}).get("overlap")
        ax.set_title(name + (f"\noverlap {ov:.2f}" if ov is not None and math.isfinite(ov) else ""), fontsize=9)
        ax.tick_params(labelsize=7)
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path, dpi)
