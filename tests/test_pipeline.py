"""aurl.train.pipeline, its parts that need no run: stage-prefixed overrides, the shipped pipelines load.
(The pipeline run end to end, killed and resumed: test_train_pipeline.py; its one writer of the production
model: test_trainer.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from aurl.console import UserError


def test_stage_prefixed_overrides():
    from aurl.train.pipeline import stage_overrides

    assert stage_overrides(["train.epochs=2", "stage2.optim.lr=1e-4"], 2) == {"train": {"epochs": 2},
                                                                            "optim": {"lr": 1e-4}}
    assert stage_overrides(["stage2.optim.lr=1e-4"], 1) == {}
    with pytest.raises(UserError):
        stage_overrides(["stage7.optim.lr=1"], 1)


@pytest.mark.parametrize("folder", ["quickstart", "tiny", "."])
def test_pipelines_load(folder):
    from aurl.train.pipeline import load_pipeline

    cfgs = load_pipeline(Path(__file__).resolve().parents[1] / "configs" / "training_configs" / folder, [])
    assert cfgs[1].model.mode == "transformer" and cfgs[3].model.mode == "vae_gan"
