"""Self-describing model files: weights + model config + vocabulary spec/hash + metrics, one .pt file.

The file holds only plain tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)`` (no pickled code). A readable JSON sidecar next to it
(``path.with_suffix(".json")``) carries everything but the weights. Loading refuses a file whose
vocabulary or configuration does not match this code, naming what differs.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, fields
from pathlib import Path

import torch

from aurl.atomic import atomic_torch_save, atomic_write_json
from aurl.console import UserError, warn
from aurl.model.config import ModelConfig
from aurl.model.vaegan import MusicTransformerVAEGAN
from aurl.vocab import vocab_hash, vocab_spec

FORMAT = "aurl.model"
FORMAT_VERSION = 1
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def unwrap(model):
    """The model inside DDP / DeepSpeed (.module) and torch.compile (._orig_mod) wrappers: the one unwrap."""
    while True:
        # `is None`, not `or`: a compiled module's truth value calls its __len__, which raises for a model
        inner = getattr(model, "module", None)
        if inner is None:
            inner = getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def resolve_device(name: str) -> torch.device:
    """A --device value: "auto" (CUDA when present, else CPU), "cpu", "cuda[:i]"; UserError otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name!r}: {e}") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device here")
    return dev


def _plain_state(model_or_state) -> dict[str, torch.Tensor]:
    state = model_or_state if isinstance(model_or_state, dict) else unwrap(model_or_state).state_dict()
    out = {}
    for k, v in state.items():
        for p in _WRAPPER_PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        out[k] = v.detach().to("cpu").contiguous().clone()
    return out


def _as_number(v):
    if isinstance(v, torch.Tensor):
        return v.item()
    return v


def save_model_file(path: str | Path, model, cfg: ModelConfig, metrics: dict | None = None,
                    extra: dict | None = None, seq_len: int | None = None) -> Path:
    """Write the model file atomically (and its JSON sidecar). `model` may be wrapped, or a state dict.

    `metrics` values: numbers or scalar tensors; `extra` (step, stage, ...) must be JSON-able.
    `seq_len`: the window length the model was trained on (data.seq_len); generation and evaluation never
    feed it more context than that (``context_length``). None = cfg.max_seq_len.
    """
    seq_len = int(seq_len if seq_len is not None else cfg.max_seq_len)
    if not 1 <= seq_len <= cfg.max_seq_len:
        raise ValueError(f"seq_len {seq_len} outside [1, max_seq_len={cfg.max_seq_len}]")
    path = Path(path)
    metrics = {k: _as_number(v) for k, v in (metrics or {}).items()}
    extra = dict(extra or {})
    try:
        json.dumps(metrics)
        json.dumps(extra)
    except TypeError as e:
        raise ValueError(f"metrics and extra must be JSON-able: {e}") from e
    if not isinstance(model, dict) and getattr(unwrap(model), "cfg", cfg) != cfg:
        raise ValueError("save_model_file: cfg is not the config this model was built with")
    state = _plain_state(model)
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "seq_len": seq_len,
        "vocab_hash": vocab_hash(),
        "vocab_spec": vocab_spec(),
        "metrics": metrics,
        "extra": extra,
        "num_parameters": int(sum(v.numel() for v in state.values())),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_torch_save({**meta, "model_state": state}, path)
    atomic_write_json(path.with_suffix(".json"), {**meta, "weights_file": path.name})
    return path


def _diff_keys(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k, "<missing>") != current.get(k, "<missing>")]


def load_model_state(path: str | Path, map_location="cpu") -> tuple[dict[str, torch.Tensor], ModelConfig, dict]:
    """(state_dict, cfg, meta) of a model file, after checking format, vocabulary and config fields."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"checkpoint {path}: a folder, not a model file (e.g. {path}/checkpoints/best_model.pt)")
    if not path.is_file():
        raise UserError(f"checkpoint {path}: no such file")
    try:
        with warnings.catch_warnings():  # torch warns about a junk file's pickle protocol before failing on it
            warnings.simplefilter("ignore")
            blob = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input problem
        # only the first sentence: torch's advice to retry with weights_only=False would run untrusted code
        first = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else ""
        raise UserError(f"checkpoint {path}: not a readable model file, corrupt or truncated "
                        f"({type(e).__name__}{': ' + first[:160] if first else ''})") from e
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or "model_state" not in blob:
        raise UserError(f"checkpoint {path}: not an aurl model file (no '{FORMAT}' format tag; a training-state "
                        "checkpoint folder is not a model file)")
    if blob.get("format_version") != FORMAT_VERSION:
        raise UserError(f"checkpoint {path}: format version {blob.get('format_version')!r}, this code reads "
                        f"{FORMAT_VERSION}")
    if blob.get("vocab_hash") != vocab_hash():
        saved_spec = blob.get("vocab_spec") or {}
        differs = _diff_keys(saved_spec, vocab_spec())
        raise UserError(f"checkpoint {path}: vocabulary differs from this code's (vocabulary version "
                        f"{saved_spec.get('version', '?')}, this code's {vocab_spec().get('version', '?')}; vocab_spec "
                        f"fields: {', '.join(differs) or 'hash only'}); it was trained on other token ids")
    saved = dict(blob.get("config") or {})
    known = set(ModelConfig.field_names())
    unknown = sorted(set(saved) - known)
    if unknown:
        raise UserError(f"checkpoint {path}: model config fields unknown to this code: {', '.join(unknown)}")
    missing = sorted(known - set(saved))
    if missing:
        warn(f"checkpoint {path}: model config lacks {', '.join(missing)}; using today's defaults")
    cfg = ModelConfig(**saved)
    try:
        cfg.validate()
    except UserError as e:
        raise UserError(f"checkpoint {path}: {e}") from e
    meta = {k: v for k, v in blob.items() if k != "model_state"}
    return blob["model_state"], cfg, meta


def context_length(cfg: ModelConfig, meta: dict) -> int:
    """The most tokens to feed the model at once: the window it was trained on (files written before the
    window was recorded: max_seq_len)."""
    return min(int(meta.get("seq_len") or cfg.max_seq_len), cfg.max_seq_len)


def load_model_file(path: str | Path, map_location="cpu", expected: ModelConfig | None = None):
    """-> (model in eval mode, cfg, meta). With `expected`, refuse a config that differs from it."""
    state, cfg, meta = load_model_state(path, map_location)
    if expected is not None:
        differs = [f.name for f in fields(ModelConfig) if getattr(cfg, f.name) != getattr(expected, f.name)]
        if differs:
            detail = ", ".join(f"{k}: file {getattr(cfg, k)!r} vs expected {getattr(expected, k)!r}" for k in differs)
            raise UserError(f"checkpoint {path}: model config differs ({detail})")
    model = MusicTransformerVAEGAN(cfg)
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise UserError(f"checkpoint {path}: weights do not match its config ({'; '.join(lines[:3])})") from e
    problems = []
    if result.missing_keys:
        problems.append(f"missing {len(result.missing_keys)} tensors (e.g. {', '.join(result.missing_keys[:3])})")
    if result.unexpected_keys:
        problems.append(f"unexpected {len(result.unexpected_keys)} tensors (e.g. "
                        f"{', '.join(result.unexpected_keys[:3])})")
    if problems:
        raise UserError(f"checkpoint {path}: weights do not match its config ({'; '.join(problems)})")
    return model.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval(), cfg, meta


def init_from_model_file(path: str | Path, model, map_location="cpu"):
    """Start `model` from another stage's model file (any mode/size): -> (TransferReport, that file's meta).

    The file's vocabulary must match this code's; its weights are transferred or grown into `model` (see
    aurl.model.transfer); callers log `report.summary()`.
    """
    from aurl.model.transfer import transfer_weights

    state, src_cfg, meta = load_model_state(path, map_location)
    try:
        report = transfer_weights(state, src_cfg, model)
    except ValueError as e:
        raise UserError(f"checkpoint {path}: cannot start this model from it ({e})") from e
    return report, meta
