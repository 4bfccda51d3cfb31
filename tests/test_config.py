"""aurl.config: typed YAML -> dataclasses, precedence, and refusals that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from aurl.config import StageConfig, build_config, load_config, parse_overrides, stage_config_path
from aurl.console import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "configs" / "training_configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO / "configs")))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, StageConfig)


def test_defaults_yaml_and_cli_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 3\n  seed: 5\noptim:\n  lr: 0.01\n")
    cfg = load_config(f, ["train.epochs=7", "optim.grad_clip=0"])
    assert cfg.train.epochs == 7          # CLI beats YAML
    assert cfg.train.seed == 5            # YAML beats default
    assert cfg.optim.lr == 0.01
    assert cfg.optim.grad_clip == 0.0     # int accepted for a float field
    # ... and stored as a float, so `lr: 1` and `lr: 1.0` are one config (one hash: a resume is not refused)
    # (mutation: the int kept -> the isinstance and the hash comparison fail)
    assert isinstance(cfg.optim.grad_clip, float)
    assert load_config(None, ["optim.lr=1"]).hash() == load_config(None, ["optim.lr=1.0"]).hash()
    assert cfg.data.batch_size == StageConfig().data.batch_size  # default


def test_model_and_augment_sections_are_their_owners_dataclasses():
    from aurl.data.augment import AugmentConfig
    from aurl.model.config import ModelConfig

    cfg = build_config({"model": {"mode": "vae", "d_model": 64, "n_heads": 4, "max_seq_len": 128},
                        "data": {"seq_len": 64}, "augment": {"enabled": True, "transpose_max": 3}})
    assert isinstance(cfg.model, ModelConfig) and cfg.model.mode == "vae"
    assert isinstance(cfg.augment, AugmentConfig) and cfg.augment.transpose_max == 3


@pytest.mark.parametrize("raw, key", [
    ({"trian": {"epochs": 1}}, "trian"),
    ({"train": {"epoch": 1}}, "train.epoch"),
    ({"model": {"d_modle": 8}}, "model.d_modle"),
    ({"augment": {"transpose": 2}}, "augment.transpose"),
    ({"train": {"epochs": "three"}}, "train.epochs"),
    ({"train": {"epochs": 2.5}}, "train.epochs"),
    ({"train": {"epochs": True}}, "train.epochs"),  # a bool is no int here (mutation: accepted -> fails)
    ({"optim": {"lr": "fast"}}, "optim.lr"),
    ({"logging": {"progress_bar": "yes"}}, "logging.progress_bar"),
    ({"train": {"mixed_precision": "fp8"}}, "train.mixed_precision"),
    ({"checkpoint": {"keep": 1}}, "checkpoint.keep"),
    ({"data": {"seq_len": 4096}}, "data.seq_len"),
    ({"model": {"mode": "gan"}}, "model.mode"),
    ({"logging": {"tracker": "mlflow"}}, "logging.tracker"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_key_or_type_is_refused_naming_the_key(raw, key):
    with pytest.raises(UserError) as e:
        build_config(raw)
    assert key in str(e.value)


def test_a_key_the_stages_mode_does_not_read_is_refused_away_from_its_default():
    """Every key of MODE_ONLY_KEYS, set away from its default in a stage whose mode does not read it, is
    refused naming the YAML, the key, its value and the mode (parsed and then ignored otherwise); at its default,
    or in a mode that reads it, it is accepted. Mutation: check_mode_only_keys not called -> fails (a
    transformer stage takes model.word_dropout 0.5); its default comparison dropped -> fails (the defaults
    refused)."""
    from aurl.config import MODE_ONLY_KEYS

    defaults, refused = StageConfig(), 0
    for key, modes in MODE_ONLY_KEYS.items():
        section, name = key.split(".")
        default = getattr(getattr(defaults, section), name)
        other = (default * 2 or 1) if isinstance(default, int) else default / 2 + 0.25  # in range, sizes still valid
        for mode in ("transformer", "vae", "vae_gan"):
            raw = {"model": {"mode": mode}, section: {**({"mode": mode} if section == "model" else {}), name: other}}
            build_config({"model": {"mode": mode}, section: {name: default}}, source="s.yaml")  # the default: fine
            if mode in modes:
                assert getattr(getattr(build_config(raw, source="s.yaml"), section), name) == other
                continue
            with pytest.raises(UserError) as e:
                build_config(raw, source="s.yaml")
            assert str(e.value) == (f"s.yaml: config key {key} = {other!r}: only model.mode {' or '.join(modes)} "
                                    f"uses it, this stage's mode is {mode} (to set it for one stage: "
                                    f"stageN.{key}=...)")
            refused += 1
    assert len(MODE_ONLY_KEYS) == 16 and refused == 8 + 8 * 2  # 8 vae keys in transformer; 8 gan keys in two modes


def test_bad_overrides():
    with pytest.raises(UserError, match="section.key=value"):
        parse_overrides(["epochs=3"])
    with pytest.raises(UserError, match="train.nope"):
        load_config(None, ["train.nope=1"])
    assert parse_overrides(["data.data_dir=null", "train.seed=3"]) == {"data": {"data_dir": None},
                                                                        "train": {"seed": 3}}


def test_missing_yaml(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text, where, what", [
    ("train: [1, 2\n", "line 2, column 1", "expected ',' or ']', but got the end of the file (while parsing a flow "
                                           "sequence that starts at line 1, column 8)"),
    ("train: {epochs: 2\n", "line 2, column 1", "expected ',' or '}'"),
    ("train:\n\tepochs: 2\n", "line 2, column 1", "found character '\\t' that cannot start any token (YAML indents "
                                                 "with spaces; this line holds a tab)"),
    ("train:\n  epochs: 2\n   seed: 3\n", "line 3, column 8", "mapping values are not allowed here"),
    ("train:\n  epochs: 'two\n", "line 3, column 1", "found unexpected end of stream"),
    ("- a\nb: 1\n", "line 2, column 1", "expected <block end>, but found"),
], ids=["unclosed-bracket", "unclosed-brace", "tab", "bad-indent", "unclosed-quote", "list-then-map"])
def test_broken_yaml_is_one_line_with_file_line_column_and_what(tmp_path, text, where, what):
    bad = tmp_path / "stage1.yaml"
    bad.write_text(text)
    with pytest.raises(UserError) as e:
        load_config(bad)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{bad}, {where}: YAML syntax error: "), msg
    assert what in msg, msg


def test_a_binary_file_as_yaml_is_one_line(tmp_path):
    bad = tmp_path / "stage1.yaml"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    with pytest.raises(UserError, match=r"stage1.yaml: not a UTF-8 text file \(byte 0: invalid start byte\)"):
        load_config(bad)


def test_stage_config_path(tmp_path):
    for n in (1, 2, 3):
        (tmp_path / f"tiny_stage{n}.yaml").write_text("")
    assert stage_config_path(tmp_path, 2).name == "tiny_stage2.yaml"
    assert stage_config_path(str(tmp_path / "tiny_stage{stage}.yaml"), 3).name == "tiny_stage3.yaml"
    with pytest.raises(UserError):
        stage_config_path(tmp_path / "missing", 1)
    # two files naming stage 1: refused, not the first one taken (mutation: only none refused -> fails)
    (tmp_path / "stage1_old.yaml").write_text("")
    with pytest.raises(UserError, match=r"expected exactly one \*.yaml naming stage 1, found \['stage1_old.yaml', "
                                        r"'tiny_stage1.yaml'\]"):
        stage_config_path(tmp_path, 1)


def test_config_hash_ignores_logging_but_not_model():
    a = build_config({})
    b = build_config({"logging": {"log_every_steps": 3}})
    c = build_config({"model": {"dropout": 0.0}})
    assert a.hash() == b.hash() != c.hash()


def test_cli_values_parse_like_users_mean():
    cfg = load_config(None, ["optim.lr=1e-4", "train.mixed_precision=no", "logging.progress_bar=false"])
    assert cfg.optim.lr == 1e-4 and cfg.train.mixed_precision == "no" and cfg.logging.progress_bar is False
    # only true/false are booleans: YAML 1.1's yes/no/on/off/y/n stay words (mutation: only "no" kept -> fails)
    words = ["yes", "No", "on", "OFF", "y", "n"]
    assert parse_overrides([f"s.k{i}={w}" for i, w in enumerate(words)]) == {"s": {f"k{i}": w for i, w in
                                                                                  enumerate(words)}}
    with pytest.raises(UserError, match="logging.progress_bar"):
        load_config(None, ["logging.progress_bar=off"])
