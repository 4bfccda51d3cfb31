"""aurl.train.trainer (StageTrainer), in this process on the tiny configs: the one writer of the production
model. (The Engine each launch gets: test_engine.py.) The end-to-end runs (kill -9 and resume
bit for bit, multi-process, DeepSpeed) are in test_train_pipeline.py, test_launch.py and test_deepspeed.py."""

from __future__ import annotations

from pathlib import Path

import torch
from run_helpers import model_tensors

from aurl.rundir import RunDir
from aurl.train.pipeline import load_pipeline, run_pipeline

TINY = Path(__file__).resolve().parents[1] / "configs" / "training_configs" / "tiny"
QUICK = ("train.max_steps=2", "eval.enabled=false", "logging.tracker=none", "logging.progress_bar=false",
         "checkpoint.every_steps=0")


def same_weights(a: Path, b: Path) -> int:
    """Every tensor of two model files equal; how many were compared."""
    ta, tb = model_tensors(a), model_tensors(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    return len(ta)


def test_best_model_is_the_most_advanced_stage_and_rerunning_a_finished_stage_keeps_it(tmp_path):
    """best_model.pt has one writer (StageTrainer.save_best): after stages 1 and 2 it holds stage 2's best;
    `--stage 1` again (already completed: skipped) leaves it as it is. (The copy a skipped stage used to make
    put stage 1's weights back into the production model.)"""
    run = RunDir(tmp_path / "run")
    cfgs = load_pipeline(TINY, [*QUICK, f"data.cache_dir={tmp_path / 'cache'}"])
    assert run_pipeline(cfgs, run.root, (1, 2)) == 0
    assert same_weights(run.best_model, run.best(2)) > 5
    stamp = run.best_model.stat().st_mtime_ns
    assert run_pipeline(cfgs, run.root, (1,)) == 0
    assert run.best_model.stat().st_mtime_ns == stamp
    assert same_weights(run.best_model, run.best(2)) > 5


def test_validation_windows_are_laid_out_at_the_first_validation_not_at_setup(tmp_path):
    """On a large cache the validation layout takes seconds (bench/RESULTS.md: 4.5 s at 100,000 files), so the
    trainer builds its validation loader at the first validation: after setup nothing has laid it out, and
    the first validation does, once, over every validation window. Mutations: the loader built in
    setup_loaders -> fails; len(self.val_ds) printed in setup -> fails; val_loader a plain property (a new
    loader, workers and sampler at every validation) -> fails."""
    from aurl.train.pipeline import make_accelerator
    from aurl.train.trainer import StageTrainer

    cfg = load_pipeline(TINY, list(QUICK))[1]
    trainer = StageTrainer(cfg, 1, RunDir(tmp_path / "run"), make_accelerator("no"))
    trainer.setup()
    assert "_layout" not in vars(trainer.val_ds)  # functools.cached_property: set on first use
    trainer.resume()
    trainer.start()
    trainer.validate()
    assert "_layout" in vars(trainer.val_ds) and len(trainer.val_loader) >= 1
    assert trainer.val_loader is trainer.val_loader  # built once (a plain property: a new loader per validation)
    trainer.finish("stopped")
