"""Run trackers: one interface (log, close), a no-op when tracking is off, so the loop never branches on it.

Only rank 0 tracks (Trackers(enabled=False) elsewhere). Tracking never blocks or kills training: a tracker
that fails to start or to log is dropped with a one-line warning. Every record also goes to
<output-dir>/logs/metrics.jsonl (read by aurl.evaluate's loss curves).

TensorBoard: <output-dir>/logs/tensorboard/stageN/, x = optimizer step.

W&B: one run per stage (name and job_type "stageN"), grouped by the pipeline's run id (training_state.json
"run_id"), the stage config as the run config. The W&B run id is recorded in the stage's entry of the state
file ("wandb_run_id") and passed again with resume="allow" when the stage resumes, so one stage stays one
W&B run. The x-axis is the optimizer step, logged as the metric "step" (define_metric): a resumed stage
replays the steps after its checkpoint, and W&B's own step counter would drop records that go back.
Modes: WANDB_MODE (online, offline, disabled) wins; unset and no API key (WANDB_API_KEY or a netrc entry)
-> offline with a warning, never a network wait. Files go to $WANDB_DIR, else <output-dir>/logs/wandb/;
upload an offline run later with `wandb sync <dir>/offline-run-*`. An offline resume writes a new
offline-run dir under the same id (W&B merges them on sync).

Media (log_media, the stage-end evaluation, at the stage's last optimizer step): W&B gets wandb.Audio,
wandb.Image and a wandb.Table (a WAV or PNG cell shown as sound or picture); TensorBoard gets add_audio,
add_image and add_text (the table as Markdown, files by name).
"""

from __future__ import annotations

import html
import json
import netrc
import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from aurl.console import warn
from aurl.rundir import RunDir

WANDB_INIT_TIMEOUT_S = 60  # a key but no network: give up after this (W&B's default is 90 s)


@dataclass
class Media:
    """What an evaluation shows in the trackers (tags are W&B keys / TensorBoard tags)."""

    audio: dict[str, Path] = field(default_factory=dict)
    """tag -> 16-bit WAV file"""
    images: dict[str, Path] = field(default_factory=dict)
    """tag -> PNG file"""
    text: dict[str, str] = field(default_factory=dict)
    """tag -> Markdown"""
    tables: dict[str, tuple[list[str], list[list]]] = field(default_factory=dict)
    """tag -> (columns, rows); a Path cell to a .wav/.png is shown as that sound/picture, None as empty"""


def _markdown_table(columns: list[str], rows: list[list]) -> str:
    def cell(v) -> str:
        if v is None:
            return ""
        return v.name if isinstance(v, Path) else f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


class NullTracker:
    def log(self, metrics: dict, step: int) -> None:
        pass

    def log_media(self, media: Media, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(NullTracker):
    def __init__(self, log_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(log_dir))

    def log(self, metrics: dict, step: int) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, float(v), step)
        self.writer.flush()  # a killed run keeps what it logged

    def log_media(self, media: Media, step: int) -> None:
        import numpy as np
        import torch
        from PIL import Image

        from aurl.evaluate.audio import read_wav

        for tag, path in media.audio.items():
            samples, rate = read_wav(path)
            self.writer.add_audio(tag, torch.from_numpy(samples).unsqueeze(0), step, sample_rate=rate)
        for tag, path in media.images.items():
            with Image.open(path) as im:
                self.writer.add_image(tag, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        for tag, text in media.text.items():
            self.writer.add_text(tag, text, step)
        for tag, (columns, rows) in media.tables.items():
            self.writer.add_text(tag, _markdown_table(columns, rows), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def wandb_has_key() -> bool:
    """An API key W&B would find: WANDB_API_KEY, or a netrc entry for its host (what `wandb login` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


class WandbTracker(NullTracker):
    def __init__(self, project: str, group: str, stage: int, config: dict, out_dir: Path, run_id: str | None):
        import wandb

        mode = os.environ.get("WANDB_MODE")
        if mode is None and not wandb_has_key():
            mode = "offline"
            warn("W&B: no API key (WANDB_API_KEY or `wandb login`): logging offline; upload later with "
                 "`wandb sync`, or set WANDB_MODE=disabled")
        wandb_dir = Path(os.environ.get("WANDB_DIR") or RunDir(out_dir).wandb)
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=project, id=run_id, resume="allow",
                              group=group, job_type=f"stage{stage}", name=f"{group}-stage{stage}", config=config,
                              dir=str(wandb_dir), mode=mode,
                              settings=wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S, console="off"))
        self.run.define_metric("step")
        self.run.define_metric("*", step_metric="step")
        self.id = self.run.id

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({"step": int(step), **{k: float(v) for k, v in metrics.items()}})

    def log_media(self, media: Media, step: int) -> None:
        import wandb

        def cell(v):
            if isinstance(v, Path):
                return wandb.Audio(str(v)) if v.suffix == ".wav" else wandb.Image(str(v))
            return v

        record: dict = {"step": int(step)}
        record.update({tag: wandb.Audio(str(p)) for tag, p in media.audio.items()})
        record.update({tag: wandb.Image(str(p)) for tag, p in media.images.items()})
        record.update({tag: wandb.Html(f"<pre>{html.escape(text)}</pre>") for tag, text in media.text.items()})
        for tag, (columns, rows) in media.tables.items():
            record[tag] = wandb.Table(columns=columns, data=[[cell(v) for v in row] for row in rows])
        self.run.log(record)

    def close(self) -> None:
        self.run.finish()


class Trackers(NullTracker):
    """Fan out to several trackers plus the JSONL record; each failure drops only that tracker.
    wandb_run_id: the id to resume (None: a new run); .wandb_run_id afterwards: the W&B run's id, if any."""

    def __init__(self, kind: str, out_dir: Path, stage: int, run_id: str, project: str, config: dict,
                 enabled: bool = True, wandb_run_id: str | None = None):
        self.trackers: list = []
        self.jsonl = RunDir(out_dir).metrics_log if enabled else None
        self.stage = stage
        self.wandb_run_id = None
        if not enabled:
            return
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        if kind in ("tensorboard", "both"):
            self._start(lambda: TensorBoardTracker(RunDir(out_dir).tensorboard(stage)))
        if kind in ("wandb", "both"):
            wb = self._start(lambda: WandbTracker(project, run_id, stage, config, out_dir, wandb_run_id))
            self.wandb_run_id = wb.id if wb is not None else None

    def _start(self, make):
        try:
            tracker = make()
        except Exception as e:  # noqa: BLE001 -- tracking must never stop training
            warn(f"tracker not started ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                 "training goes on without it")
            return None
        self.trackers.append(tracker)
        return tracker

    def log(self, metrics: dict, step: int, split: str = "train") -> None:
        if self.jsonl is None:
            return
        record = {"stage": self.stage, "step": int(step), "split": split,
                  **{k.split("/", 1)[1] if k.startswith(split + "/") else k: float(v) for k, v in metrics.items()}}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        self._each("log", metrics, step)

    def log_media(self, media: Media, step: int) -> None:
        """Media to every tracker (not to metrics.jsonl); a tracker that fails is dropped, training goes on."""
        self._each("log_media", media, step)

    def _each(self, method: str, *args) -> None:
        """Call `method` on every tracker; one that raises is dropped with a warning (training never stops)."""
        for t in list(self.trackers):
            try:
                getattr(t, method)(*args)
            except Exception as e:  # noqa: BLE001
                warn(f"tracker {type(t).__name__} failed in {method} ({type(e).__name__}: {e}); dropped")
                self.trackers.remove(t)

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # noqa: BLE001
                warn(f"tracker {type(t).__name__} did not close cleanly ({e})")
        self.trackers = []
