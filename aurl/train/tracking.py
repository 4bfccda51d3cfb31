"""Run trackers: one interface (log, close), a no-op when tracking is off, so the loop never branches on it.

Tracking never blocks or kills training: a tracker that fails to start or to log is dropped with a warning.
Every record also goes to <output-dir>/logs/metrics.jsonl (read by aurl.evaluate's loss curves).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from aurl.console import warn


class NullTracker:
    def log(self, metrics: dict, step: int) -> None:
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

    def close(self) -> None:
        self.writer.close()


class WandbTracker(NullTracker):
    def __init__(self, project: str, run_id: str, stage: int, config: dict, out_dir: Path):
        if not os.environ.get("WANDB_API_KEY") and "WANDB_MODE" not in os.environ:
            os.environ["WANDB_MODE"] = "offline"  # no key: never hang on the network
        import wandb

        self.run = wandb.init(project=project, id=f"{run_id}-stage{stage}", resume="allow", group=run_id,
                              job_type=f"stage{stage}", config=config, dir=str(out_dir))

    def log(self, metrics: dict, step: int) -> None:
        self.run.log({k: float(v) for k, v in metrics.items()}, step=step)

    def close(self) -> None:
        self.run.finish()


class Trackers(NullTracker):
    """Fan out to several trackers plus the JSONL record; each failure drops only that tracker."""

    def __init__(self, kind: str, out_dir: Path, stage: int, run_id: str, project: str, config: dict,
                 enabled: bool = True):
        self.trackers: list = []
        self.jsonl = out_dir / "logs" / "metrics.jsonl" if enabled else None
        self.stage = stage
        if not enabled:
            return
        self.jsonl.parent.mkdir(parents=True, exist_ok=True)
        if kind in ("tensorboard", "both"):
            self._start(lambda: TensorBoardTracker(out_dir / "logs" / "tensorboard" / f"stage{stage}"))
        if kind in ("wandb", "both"):
            self._start(lambda: WandbTracker(project, run_id, stage, config, out_dir / "logs"))

    def _start(self, make) -> None:
        try:
            self.trackers.append(make())
        except Exception as e:  # noqa: BLE001 -- tracking must never stop training
            warn(f"tracker not started ({type(e).__name__}: {e}); training goes on without it")

    def log(self, metrics: dict, step: int, split: str = "train") -> None:
        if self.jsonl is None:
            return
        record = {"stage": self.stage, "step": int(step), "split": split,
                  **{k.split("/", 1)[1] if k.startswith(split + "/") else k: float(v) for k, v in metrics.items()}}
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        for t in list(self.trackers):
            try:
                t.log(metrics, step)
            except Exception as e:  # noqa: BLE001
                warn(f"tracker {type(t).__name__} failed ({e}); dropped")
                self.trackers.remove(t)

    def close(self) -> None:
        for t in self.trackers:
            try:
                t.close()
            except Exception as e:  # noqa: BLE001
                warn(f"tracker {type(t).__name__} did not close cleanly ({e})")
        self.trackers = []
