"""The run folder (default outputs/): every path a run writes or reads, named in one place.

    RUN/training_state.json (+ .bak)   the run's progress, rank 0 (aurl.train.state)
    RUN/training.lock                  held while a run is live
    RUN/slurm_jobs.json                the stage jobs slurm/pipeline.sh submitted (aurl.slurm)
    RUN/cache/                         the token cache, unless data.cache_dir puts it elsewhere
    RUN/checkpoints/stageN/step_*/     committed full-state checkpoints (aurl.train.checkpoint)
    RUN/checkpoints/stageN/best.pt     the stage's best model (aurl.model.checkpoint, + .json sidecar)
    RUN/checkpoints/best_model.pt      the production model: the best of the most advanced stage reached
    RUN/logs/metrics.jsonl             every tracked record; logs/tensorboard/stageN, logs/wandb, logs/slurm
    RUN/eval/stageN/                   the stage-end evaluation (eval.json, samples, pictures)
    RUN/samples/                       python -m aurl.generate's default output folder
    RUN/report.html                    the run report (aurl.evaluate.report)

A model file knows its run by where it lies (RunDir.holding): RUN/checkpoints/*.pt or
RUN/checkpoints/stageN/*.pt; anywhere else it has none. Nothing imports torch here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STATE_FILE = "training_state.json"
LOCK_FILE = "training.lock"
JOBS_FILE = "slurm_jobs.json"
REPORT_FILE = "report.html"
# loss-record sources under RUN/logs, in order of preference (the trainer appends metrics.jsonl)
LOSS_SOURCES = ("metrics.jsonl", "losses.jsonl", "tensorboard")


@dataclass(frozen=True)
class RunDir:
    root: Path

    def __init__(self, root: str | Path):
        object.__setattr__(self, "root", Path(root))

    # ------------------------------------------------------------------------------ run-wide files
    @property
    def state_file(self) -> Path:
        return self.root / STATE_FILE

    @property
    def state_backup(self) -> Path:
        return self.root / (STATE_FILE + ".bak")

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def slurm_jobs(self) -> Path:
        return self.root / JOBS_FILE

    @property
    def report(self) -> Path:
        return self.root / REPORT_FILE

    def cache(self, cache_dir: str | None = None) -> Path:
        """The token cache: data.cache_dir when set, else RUN/cache."""
        return Path(cache_dir) if cache_dir else self.root / "cache"

    # ------------------------------------------------------------------------------ models and checkpoints
    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def best_model(self) -> Path:
        return self.checkpoints / "best_model.pt"

    def stage_checkpoints(self, stage: int) -> Path:
        return self.checkpoints / f"stage{stage}"

    def best(self, stage: int) -> Path:
        return self.stage_checkpoints(stage) / "best.pt"

    # ------------------------------------------------------------------------------ logs and evaluations
    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics_log(self) -> Path:
        return self.logs / "metrics.jsonl"

    def tensorboard(self, stage: int) -> Path:
        return self.logs / "tensorboard" / f"stage{stage}"

    @property
    def wandb(self) -> Path:
        """W&B's files (it adds its own wandb/ folder inside); $WANDB_DIR wins (aurl.train.tracking)."""
        return self.logs

    def loss_records(self) -> Path | None:
        """The run's loss records for the loss-curve picture (LOSS_SOURCES in order), or None."""
        return next((self.logs / n for n in LOSS_SOURCES if (self.logs / n).exists()), None)

    def eval(self, name: int | str) -> Path:
        """RUN/eval/stageN for a stage number, RUN/eval/<name> for a model file's stem."""
        return self.root / "eval" / (f"stage{name}" if isinstance(name, int) else name)

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def cleared(self) -> list[Path]:
        """What --clear deletes: the state, checkpoints, logs and lock (the cache and evaluations stay)."""
        return [self.state_file, self.state_backup, self.checkpoints, self.logs, self.lock_file]

    # ------------------------------------------------------------------------------ from a model file
    @classmethod
    def holding(cls, model_file: str | Path) -> RunDir | None:
        """The run a model file belongs to by the layout above (RUN/checkpoints/X.pt or
        RUN/checkpoints/stageN/X.pt), else None."""
        path = Path(model_file).resolve()
        if path.parent.name == "checkpoints":
            return cls(path.parent.parent)
        if path.parent.parent.name == "checkpoints" and path.parent.name.startswith("stage"):
            return cls(path.parent.parent.parent)
        return None
