"""aurl.rundir: the run folder's layout, and a model file's run found by where it lies (never by searching)."""

from __future__ import annotations

from pathlib import Path

import pytest

from aurl.rundir import RunDir


@pytest.mark.parametrize("inside, run", [("checkpoints/best_model.pt", "."), ("checkpoints/vae.pt", "."),
                                         ("checkpoints/stage2/best.pt", "."), ("best_model.pt", None),
                                         ("checkpoints/other/best.pt", None), ("x/y/checkpoints.pt", None)],
                         ids=lambda v: str(v))
def test_a_model_file_knows_its_run_by_layout(tmp_path, inside, run):
    found = RunDir.holding(tmp_path / "r" / inside)
    assert (found.root if found else None) == ((tmp_path / "r").resolve() if run else None)


def test_the_layout_the_trainer_evaluator_and_slurm_share(tmp_path):
    run = RunDir(tmp_path)
    paths = {
        "state": (run.state_file, "training_state.json"), "lock": (run.lock_file, "training.lock"),
        "jobs": (run.slurm_jobs, "slurm_jobs.json"), "cache": (run.cache(), "cache"),
        "stage ckpts": (run.stage_checkpoints(2), "checkpoints/stage2"), "best": (run.best(2), "checkpoints/stage2/best.pt"),
        "production": (run.best_model, "checkpoints/best_model.pt"), "metrics": (run.metrics_log, "logs/metrics.jsonl"),
        "tensorboard": (run.tensorboard(3), "logs/tensorboard/stage3"), "eval": (run.eval(1), "eval/stage1"),
        "eval of a file": (run.eval("vae"), "eval/vae"), "report": (run.report, "report.html"),
    }
    for name, (path, rel) in paths.items():
        assert path == tmp_path / rel, name
    assert len(paths) == 12
    assert run.cache("/elsewhere") == Path("/elsewhere")  # data.cache_dir wins
    # every stage's model file lies where holding() finds the run again
    assert RunDir.holding(run.best(2)).root == tmp_path.resolve() == RunDir.holding(run.best_model).root


def test_loss_records_in_order_of_preference(tmp_path):
    run = RunDir(tmp_path)
    assert run.loss_records() is None
    (run.logs / "tensorboard").mkdir(parents=True)
    assert run.loss_records() == run.logs / "tensorboard"
    run.metrics_log.write_text("{}\n")
    assert run.loss_records() == run.metrics_log
