"""Stage-to-stage weight transfer: transformer -> vae -> vae_gan, and into wider or deeper models.

Every destination parameter ends up in exactly one list of the TransferReport:
- transferred: copied unchanged (same name, same shape);
- grown: built from a source parameter of another shape (wider) or copied into a new layer (deeper);
- fresh: no source (e.g. the encoder when a transformer becomes a vae), left at its initialization (the
  sounding-notes projection of model.sounding_embedding and the output bias of model.sounding_output_bias
  start at zero, so adding them keeps the function).
Source parameters with no destination (e.g. the discriminator when going back to a vae) are listed in
`dropped`, never silently lost.

Growth keeps the function where it can, so a stage starts from what the previous one learned:
- deeper: new layer j copies the last source layer, with its residual output projections (attn.o, mlp.down)
  zeroed, so the new block is the identity at first (pre-norm residual) and still gets gradients;
- wider (d_model, d_ff, heads of the same size, latent_dim): old weights fill the leading slice; whatever
  writes into the new residual channels (embedding columns, output-projection rows) starts at zero, so those
  channels stay zero; new heads / hidden units have zero output columns; RMSNorm weights are scaled by
  sqrt(d_old / d_new), which cancels the change of the RMS over the zero-padded width (exact up to
  RMSNorm's eps of 1e-6, ~1e-4 relative). The new input
  weights keep their random init (multiplied by zeros at first, but they give the new channels gradients).
  Changing the head size (same heads, other d_model) is copied as far as it fits but is not
  function-preserving: RoPE frequencies depend on it (`report.exact` is then False).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch

from aurl.model.config import ModelConfig

_LAYER = re.compile(r"^(decoder|encoder|disc\.stack)\.blocks\.(\d+)\.(.*)$")
_RESIDUAL_OUT = ("attn.o.weight", "mlp.down.weight", "latent_proj.weight", "sound_proj.weight")


@dataclass
class TransferReport:
    transferred: list[str] = field(default_factory=list)
    grown: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    exact: bool = True
    """True when the destination computes what the source did (the model parts they share)."""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        def groups(names: list[str]) -> str:
            tops = sorted({n.split(".blocks.")[0] if ".blocks." in n else n.split(".")[0] for n in names})
            return ", ".join(tops) if tops else "-"

        lines = [f"transferred {len(self.transferred)} tensors ({groups(self.transferred)})",
                 f"grown {len(self.grown)} ({groups(self.grown)})",
                 f"fresh {len(self.fresh)} ({groups(self.fresh)})"]
        if self.dropped:
            lines.append(f"dropped {len(self.dropped)} source tensors with no place here ({groups(self.dropped)})")
        lines += self.notes
        return "; ".join(lines)

    def to_dict(self) -> dict:
        return {"transferred": self.transferred, "grown": self.grown, "fresh": self.fresh,
                "dropped": self.dropped, "exact": self.exact, "notes": self.notes}


def _layers(cfg: ModelConfig, stack: str) -> int:
    return {"decoder": cfg.n_layers, "encoder": cfg.encoder_layers, "disc.stack": cfg.disc_layers}[stack]


def _source_name(name: str, src_cfg: ModelConfig) -> tuple[str, bool]:
    """The source parameter a destination parameter comes from, and whether it is a new (deeper) layer."""
    m = _LAYER.match(name)
    if not m:
        return name, False
    stack, j, rest = m.group(1), int(m.group(2)), m.group(3)
    n_src = _layers(src_cfg, stack)
    return f"{stack}.blocks.{min(j, n_src - 1)}.{rest}", j >= n_src


def _grow(dst_init: torch.Tensor, src: torch.Tensor, name: str, new_layer: bool) -> torch.Tensor:
    out = dst_init.detach().clone()
    is_out = name.endswith(_RESIDUAL_OUT)
    if name.endswith("norm.weight"):
        scale = math.sqrt(src.shape[0] / out.shape[0])
        out.fill_(scale)
        out[: src.shape[0]] = src * scale
        return out
    if is_out or name in ("tok_emb.weight", "disc.emb.weight"):
        out.zero_()
    if new_layer and is_out:
        return out  # identity block at first
    sl = tuple(slice(0, min(a, b)) for a, b in zip(out.shape, src.shape, strict=True))
    out[sl] = src[sl].to(out.dtype)
    return out


@torch.no_grad()
def transfer_weights(src_state_dict: dict[str, torch.Tensor], src_cfg: ModelConfig, dst_model) -> TransferReport:
    """Load what `src_state_dict` (a model of `src_cfg`) has learned into `dst_model` (in place)."""
    dst_cfg: ModelConfig = dst_model.cfg
    if src_cfg.vocab_size != dst_cfg.vocab_size:
        raise ValueError(f"vocab_size differs: source {src_cfg.vocab_size}, destination {dst_cfg.vocab_size}")
    report = TransferReport()
    if src_cfg.head_dim != dst_cfg.head_dim:
        report.exact = False
        report.notes.append(f"head size {src_cfg.head_dim} -> {dst_cfg.head_dim}: attention copied as far as "
                            "it fits, not function-preserving (RoPE frequencies change)")
    if src_cfg.is_gan and dst_cfg.is_gan and src_cfg.disc_d_model // src_cfg.disc_heads != \
            dst_cfg.disc_d_model // dst_cfg.disc_heads:
        report.notes.append("discriminator head size changed: its attention copied as far as it fits")
    dst_state = dst_model.state_dict()
    used: set[str] = set()
    new_state = {}
    for name, init in dst_state.items():
        src_name, new_layer = _source_name(name, src_cfg)
        src = src_state_dict.get(src_name)
        if src is None:
            report.fresh.append(name)
            continue
        used.add(src_name)
        if src.shape == init.shape and not new_layer:
            new_state[name] = src.to(init.dtype)
            report.transferred.append(name)
            continue
        if src.dim() != init.dim():
            raise ValueError(f"{name}: cannot grow a {tuple(src.shape)} tensor into {tuple(init.shape)}")
        if any(a < b for a, b in zip(init.shape, src.shape, strict=True)):
            report.exact = False
            report.notes.append(f"{name}: shrunk {tuple(src.shape)} -> {tuple(init.shape)} (leading slice kept)")
        new_state[name] = _grow(init, src, name, new_layer)
        report.grown.append(name)
    report.dropped = sorted(set(src_state_dict) - used)
    if "sound_proj.weight" in report.dropped:
        report.exact = False
        report.notes.append("model.sounding_embedding off in the destination: the sounding-notes feature is dropped")
    if "sound_bias" in report.dropped:
        report.exact = False
        report.notes.append("model.sounding_output_bias off in the destination: the sounding-notes output bias is dropped")
    if dst_cfg.n_layers < src_cfg.n_layers or (dst_cfg.is_vae and src_cfg.is_vae
                                                and dst_cfg.encoder_layers < src_cfg.encoder_layers):
        report.exact = False
    dst_model.load_state_dict(new_state, strict=False)
    return report
