"""Typed stage configs: YAML sections -> dataclasses.

Precedence, stated once: CLI `section.key=value` overrides > the YAML file > the dataclass defaults.
An unknown section or key, or a value of the wrong type, is a UserError naming the key, raised before any
work starts. Each component gets only its own section (data, model, augment, optim, train, checkpoint,
logging, eval). The model, augment and eval dataclasses live beside their users (aurl/model/config.py,
aurl/data/augment.py, aurl/evaluate/config.py); the range checks of augment and eval are here (validate).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from aurl.console import UserError, one_line
from aurl.data.augment import AugmentConfig
from aurl.evaluate.config import NOT_STAGE_KEYS, EvalConfig, StageEvalConfig
from aurl.model.config import ModelConfig

# fixed choices: a value outside them is refused by the config checker (_check), naming the key
Precision = Literal["no", "bf16"]
Tracker = Literal["none", "tensorboard", "wandb", "both"]
TRACKERS: tuple[str, ...] = typing.get_args(Tracker)


@dataclass
class DataConfig:
    """Where the tokens come from and how they are cut into windows."""

    data_dir: str | None = None
    """MIDI folder (null = the bundled Bach chorales from music21; --data is a shorthand for this key)."""
    cache_dir: str | None = None
    """Token cache folder (null = <output-dir>/cache)."""
    corpus_limit: int | None = None
    """Use only the first N bundled chorales (null = all); ignored when data_dir is set."""
    val_fraction: float = 0.05
    """Fraction of pieces held out for validation (split by piece, never by window)."""
    split_seed: int = 0
    """Seed of the train/validation split."""
    seq_len: int = 512
    """Window length in tokens (<= model.max_seq_len), the state prefix of a window included."""
    start_share: float = 0.1
    """Share of training windows that begin at the piece's opening (START), where generation starts; [0, 1]."""
    batch_size: int = 8
    """Micro-batch size per process (windows)."""
    num_workers: int = 0
    """DataLoader worker processes per rank (0 = load in the training process)."""


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay (the discriminator gets its own AdamW)."""

    lr: float = 3e-4
    """Peak learning rate, reached after the warm-up."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of lr at the end of the cosine decay."""
    warmup_steps: int = 100
    """Optimizer steps of linear warm-up from 0 to lr."""
    weight_decay: float = 0.01
    """AdamW weight decay (applied to matrices only, not to norms and biases)."""
    beta1: float = 0.9
    """AdamW beta1."""
    beta2: float = 0.95
    """AdamW beta2."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 = no clipping)."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (the effective batch = batch_size x grad_accum x processes)."""
    disc_lr: float = 1e-4
    """Learning rate of the discriminator (stage 3, mode vae_gan), same warm-up and decay shape."""


@dataclass
class TrainConfig:
    """How long and how the stage trains."""

    epochs: int = 10
    """Passes over the training windows (the stage also ends at max_steps or by early stopping)."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0 = no limit besides epochs)."""
    seed: int = 0
    """Seed of the model init, the sampler order, augmentation and dropout."""
    mixed_precision: Precision = "no"
    """"no" or "bf16" (autocast; works on CPU and recent GPUs)."""
    patience: int = 0
    """Stop the stage after this many validations without a better validation loss (0 = never)."""
    val_every_steps: int = 0
    """Also validate every N optimizer steps (0 = only at each epoch end)."""
    max_val_batches: int = 0
    """Validate on the first max_val_batches x data.batch_size validation windows, shared by the processes
    (0 = all); each window is scored once, so the value does not depend on the number of processes."""
    stop_margin_s: float = 120.0
    """Stop (save, exit 75) this many seconds before SLURM_JOB_END_TIME, when that is set."""
    compile: bool = False
    """torch.compile the model's forward (in place: checkpoints unchanged); refused under DeepSpeed ZeRO-3."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass, and the loss over the head in chunks (less memory, more time)."""


@dataclass
class CheckpointConfig:
    """Committed full-state checkpoints under <output-dir>/checkpoints/stageN."""

    every_steps: int = 500
    """Save every N optimizer steps (0 = only at epoch ends and on a stop)."""
    keep: int = 2
    """Committed checkpoints kept per stage (at least 2; older ones are deleted after a new commit)."""


@dataclass
class LoggingConfig:
    """Progress output and run tracking (rank 0)."""

    tracker: Tracker = "tensorboard"
    """"none", "tensorboard", "wandb" or "both" (--tracker is a shorthand for this key)."""
    log_every_steps: int = 10
    """Log training metrics every N optimizer steps."""
    progress_bar: bool = True
    """Show a tqdm bar with loss, tokens/s and ETA on rank 0."""
    wandb_project: str = "aurl"
    """W&B project (offline unless WANDB_API_KEY is set and WANDB_MODE says otherwise)."""


@dataclass
class StageConfig:
    """One stage's full config: one field per YAML section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: StageEvalConfig = field(default_factory=StageEvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def hash(self, sections: tuple[str, ...] = ("data", "model", "augment", "optim")) -> str:
        """Hash of the sections that decide what a resumed run computes."""
        d = {s: dataclasses.asdict(getattr(self, s)) for s in sections}
        d["data"] = {k: v for k, v in d.get("data", {}).items() if k not in ("num_workers", "cache_dir")}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


SECTIONS = {f.name: f for f in dataclasses.fields(StageConfig)}

# Keys that only some modes read: in a stage of another mode a value other than the default would be parsed
# and then ignored, so it is refused by name (a setting for stage 3 alone: stage3.model.word_dropout=0.2).
MODE_ONLY_KEYS = {
    **{f"model.{k}": ("vae", "vae_gan") for k in ("latent_dim", "encoder_layers", "kl_beta_max", "kl_warmup_steps",
                                                   "free_bits", "active_unit_threshold", "mu_bn_gamma",
                                                   "word_dropout")},
    **{f"model.{k}": ("vae_gan",) for k in ("disc_d_model", "disc_layers", "disc_heads", "adv_weight_max",
                                            "adv_start_step", "adv_warmup_steps", "gumbel_tau")},
    "optim.disc_lr": ("vae_gan",),
}


# ---------------------------------------------------------------------------------------------------------
# typed coercion
# ---------------------------------------------------------------------------------------------------------
def _check(key: str, value: Any, tp: Any) -> Any:
    """value as type tp, or UserError naming key. ints are accepted for floats, nothing else is coerced;
    a Literal accepts only its values."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, str) and value in typing.get_args(tp):
            return value
        raise UserError(f"config key {key}: expected one of {_tname(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _check(key, value, a)
            except UserError:
                pass
        raise UserError(f"config key {key}: expected {_tname(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:
        raise AssertionError(f"unsupported config field type {tp} for {key}")
    raise UserError(f"config key {key}: expected {_tname(tp)}, got {value!r} ({type(value).__name__})")


def _tname(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else a.__name__ for a in typing.get_args(tp))
    return tp.__name__


def _section_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _parse_scalar(text: str) -> Any:
    """A CLI value as YAML reads it (1 -> int, 1e-3 -> float, true -> bool, null -> None, else str)."""
    if text.lower() in ("no", "yes", "on", "off", "y", "n"):
        return text  # YAML 1.1 booleans; only true/false mean a bool here (train.mixed_precision=no)
    try:
        value = yaml.safe_load(text) if text != "" else ""
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads 1e-4 as a string
        except ValueError:
            pass
    return value


def parse_overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    """["train.epochs=3", ...] -> {"train": {"epochs": 3}}; a malformed item is a UserError."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not eq or not dot or not section or not name:
            raise UserError(f"override {item!r}: expected section.key=value (e.g. train.epochs=3)")
        out.setdefault(section, {})[name] = _parse_scalar(value)
    return out


def build_config(raw: dict | None, overrides: dict[str, dict[str, Any]] | None = None,
                 source: str = "config") -> StageConfig:
    """StageConfig from a YAML mapping plus overrides; every key checked against its dataclass."""
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    merged: dict[str, dict[str, Any]] = {}
    for layer, where in ((raw, source), (overrides or {}, "command line")):
        for section, values in layer.items():
            if section not in SECTIONS:
                raise UserError(f"{where}: unknown config section {section!r} "
                                f"(known: {', '.join(SECTIONS)})")
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise UserError(f"{where}: config section {section!r} must be a mapping, got {values!r}")
            merged.setdefault(section, {}).update(values)
    kwargs = {}
    for section, f in SECTIONS.items():
        cls = f.default_factory  # type: ignore[misc]
        types_ = _section_types(cls)
        values = {}
        for key, value in merged.get(section, {}).items():
            if key not in types_:
                raise UserError(f"unknown config key {section}.{key} (known keys of {section}: "
                                f"{', '.join(k for k in types_ if f'{section}.{k}' not in NOT_STAGE_KEYS)})")
            if f"{section}.{key}" in NOT_STAGE_KEYS:
                raise UserError(f"config key {section}.{key} is not a stage setting: "
                                f"{NOT_STAGE_KEYS[f'{section}.{key}']}")
            values[key] = _check(f"{section}.{key}", value, types_[key])
        try:
            kwargs[section] = cls(**values)
        except (TypeError, ValueError) as e:
            raise UserError(f"config section {section}: {e}") from e
    cfg = StageConfig(**kwargs)
    validate(cfg)
    check_mode_only_keys(cfg, source)
    return cfg


def validate(cfg: StageConfig) -> None:
    """Cross-field and range checks; UserError names the key and its value."""
    check_augment_options(cfg.augment)  # first, as when the section checked itself on construction
    cfg.model.validate()

    def bad(key: str, value: Any, why: str):
        raise UserError(f"config key {key} = {value!r}: {why}")

    d, o, t, c, lg = cfg.data, cfg.optim, cfg.train, cfg.checkpoint, cfg.logging
    if not 0.0 < d.val_fraction < 1.0:
        bad("data.val_fraction", d.val_fraction, "must be in (0, 1)")
    if not 0.0 <= d.start_share <= 1.0:
        bad("data.start_share", d.start_share, "must be in [0, 1]")
    if d.seq_len < 2 or d.seq_len > cfg.model.max_seq_len:
        bad("data.seq_len", d.seq_len, f"must be in [2, model.max_seq_len={cfg.model.max_seq_len}]")
    for key, v in (("data.batch_size", d.batch_size), ("optim.grad_accum", o.grad_accum),
                   ("train.epochs", t.epochs)):
        if v < 1:
            bad(key, v, "must be >= 1")
    for key, v in (("data.num_workers", d.num_workers), ("optim.warmup_steps", o.warmup_steps),
                   ("train.max_steps", t.max_steps), ("train.patience", t.patience),
                   ("train.val_every_steps", t.val_every_steps), ("train.max_val_batches", t.max_val_batches),
                   ("checkpoint.every_steps", c.every_steps), ("optim.grad_clip", o.grad_clip),
                   ("optim.weight_decay", o.weight_decay), ("train.stop_margin_s", t.stop_margin_s)):
        if v < 0:
            bad(key, v, "must be >= 0")
    if d.corpus_limit is not None and d.corpus_limit < 2:
        bad("data.corpus_limit", d.corpus_limit, "must be >= 2 (or null)")
    for key, v in (("optim.lr", o.lr), ("optim.disc_lr", o.disc_lr)):
        if v <= 0:
            bad(key, v, "must be > 0")
    if not 0.0 <= o.min_lr_ratio <= 1.0:
        bad("optim.min_lr_ratio", o.min_lr_ratio, "must be in [0, 1]")
    for key, v in (("optim.beta1", o.beta1), ("optim.beta2", o.beta2)):
        if not 0.0 <= v < 1.0:
            bad(key, v, "must be in [0, 1)")
    if c.keep < 2:
        bad("checkpoint.keep", c.keep, "must be >= 2 (a crash during a save must leave a committed one)")
    if lg.log_every_steps < 1:
        bad("logging.log_every_steps", lg.log_every_steps, "must be >= 1")
    check_eval_options(cfg.eval, lambda key: f"eval.{key}")


def check_mode_only_keys(cfg: StageConfig, source: str) -> None:
    """Refuse a key of MODE_ONLY_KEYS set away from its default in a stage whose model.mode does not read it
    (`source`: the stage's YAML, named in the message)."""
    defaults = StageConfig()
    for key, modes in MODE_ONLY_KEYS.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if cfg.model.mode not in modes and value != getattr(getattr(defaults, section), name):
            raise UserError(f"{source}: config key {key} = {value!r}: only model.mode {' or '.join(modes)} uses it, "
                            f"this stage's mode is {cfg.model.mode} (to set it for one stage: stageN.{key}=...)")


def check_augment_options(a: AugmentConfig) -> None:
    """The range checks of the augment section; UserError names the key and its value."""
    for f in dataclasses.fields(a):
        if f.name.endswith("_prob") and not 0.0 <= getattr(a, f.name) <= 1.0:
            raise UserError(f"augment.{f.name} must be in [0, 1], got {getattr(a, f.name)}")
    for lo, hi in (("stretch_min", "stretch_max"), ("velocity_min", "velocity_max")):
        if not 0 < getattr(a, lo) <= getattr(a, hi):
            raise UserError(f"augment.{lo} / {hi} must satisfy 0 < min <= max, got {getattr(a, lo)} / {getattr(a, hi)}")
    for name in ("transpose_max", "humanize_steps"):
        if getattr(a, name) < 0:
            raise UserError(f"augment.{name} must be >= 0, got {getattr(a, name)}")
    if not 0.0 <= a.swing_max < 1.0 or a.swing_beat_steps < 2:
        raise UserError("augment.swing_max must be in [0, 1) and swing_beat_steps >= 2")


def check_eval_options(ev: EvalConfig, name) -> None:
    """The range checks of the evaluation options, for a stage's eval section and the evaluate CLI alike;
    UserError names the option as the user wrote it (name: field -> config key or CLI flag) and its value."""
    for key in ("num_samples", "max_val_tokens", "max_data_excerpts"):
        if getattr(ev, key) < 0:
            raise UserError(f"{name(key)} must be >= 0, got {getattr(ev, key)}")
    for key in ("length", "batch_size"):
        if getattr(ev, key) < 1:
            raise UserError(f"{name(key)} must be >= 1, got {getattr(ev, key)}")
    from aurl.model.sampling import check_sampling_options  # the one check of sampling options

    check_sampling_options(ev.temperature, ev.top_k, ev.top_p, names=(name("temperature"), name("top_k"),
                                                                       name("top_p")))


def read_yaml(path: Path) -> Any:
    """The YAML document in path; a syntax error is a one-line UserError: file, line, column, what."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason})") from e
    except yaml.MarkedYAMLError as e:
        raise UserError(yaml_error_line(path, e)) from e
    except yaml.YAMLError as e:
        raise UserError(f"{path}: invalid YAML: {one_line(str(e))}") from e


def yaml_error_line(path: Path, e: yaml.MarkedYAMLError) -> str:
    """`FILE, line L, column C: what (context)`, 1-based, from PyYAML's marks (its own message spans up to
    eight lines with source excerpts)."""
    mark = e.problem_mark or e.context_mark
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
    what = one_line(e.problem or e.context or "invalid YAML").replace("'<stream end>'", "the end of the file")
    if "\\t" in what:
        what += " (YAML indents with spaces; this line holds a tab)"
    if e.context and e.problem and e.context_mark is not None:
        what += f" ({one_line(e.context)} that starts at line {e.context_mark.line + 1}, " \
                f"column {e.context_mark.column + 1})"
    return f"{where}: YAML syntax error: {what}"


def load_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> StageConfig:
    """Read a stage YAML (None = defaults only) and apply CLI overrides."""
    raw: dict | None = None
    source = "defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"--config {path}: no such file")
        raw = read_yaml(path)
        source = str(path)
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    return build_config(raw, overrides, source=source)


def stage_config_path(config: str | Path, stage: int) -> Path:
    """The YAML for `stage`: config is a file (used as is), a pattern with "{stage}", or a folder holding one
    *.yaml whose name contains the stage number (stage1_base.yaml, tiny_stage1.yaml, ...)."""
    text = str(config)
    if "{stage}" in text:
        return Path(text.replace("{stage}", str(stage)))
    p = Path(text)
    if p.is_dir():
        hits = [f for f in sorted(p.glob("*.yaml")) if str(stage) in f.stem]
        if len(hits) != 1:
            raise UserError(f"--config {p}: expected exactly one *.yaml naming stage {stage}, found "
                            f"{[h.name for h in hits] or 'none'}")
        return hits[0]
    if not p.is_file():
        raise UserError(f"--config {p}: no such file or folder")
    return p
