"""Typed stage configs: precedence, unknown keys, wrong types, every shipped YAML loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from aurl.config import load_config, stage_config_path
from aurl.console import UserError
from aurl.train.pipeline import load_pipeline, stage_overrides

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "training_configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.rglob("*.yaml")), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_shipped_configs_load(path):
    load_config(path)


@pytest.mark.parametrize("folder", ["quickstart", "tiny", "."])
def test_pipelines_load(folder):
    cfgs = load_pipeline(CONFIGS / folder, [])
    assert cfgs[1].model.mode == "transformer" and cfgs[3].model.mode == "vae_gan"


def test_precedence_cli_over_yaml_over_defaults(tmp_path):
    y = tmp_path / "s1.yaml"
    y.write_text("train: {epochs: 3}\noptim: {lr: 0.01}\n")
    cfg = load_config(y, ["train.epochs=5"])
    assert cfg.train.epochs == 5 and cfg.optim.lr == 0.01 and cfg.optim.warmup_steps == 100


@pytest.mark.parametrize("text, key", [("train: {epochz: 3}", "train.epochz"), ("trian: {epochs: 3}", "trian"),
                                       ("train: {epochs: '3'}", "train.epochs"), ("optim: {lr: fast}", "optim.lr"),
                                       ("model: {d_model: 1.5}", "model.d_model"),
                                       ("augment: {enabled: 1}", "augment.enabled")])
def test_bad_keys_and_types_name_the_key(tmp_path, text, key):
    y = tmp_path / "s.yaml"
    y.write_text(text + "\n")
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(y)


def test_stage_prefixed_overrides():
    assert stage_overrides(["train.epochs=2", "stage2.optim.lr=1e-4"], 2) == {"train": {"epochs": 2},
                                                                            "optim": {"lr": 1e-4}}
    assert stage_overrides(["stage2.optim.lr=1e-4"], 1) == {}
    with pytest.raises(UserError):
        stage_overrides(["stage7.optim.lr=1"], 1)


def test_config_folder_must_name_each_stage_once(tmp_path):
    (tmp_path / "stage1.yaml").write_text("")
    with pytest.raises(UserError, match="stage 2"):
        stage_config_path(tmp_path, 2)


def test_cli_values_parse_like_users_mean():
    cfg = load_config(None, ["optim.lr=1e-4", "train.mixed_precision=no", "logging.progress_bar=false"])
    assert cfg.optim.lr == 1e-4 and cfg.train.mixed_precision == "no" and cfg.logging.progress_bar is False
