"""ModelConfig: the typed ``model:`` section of a stage YAML (one docstring line per field).

Sizes live here and only here; the trainer passes this section (and nothing else) to the model.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, fields
from typing import Literal

from aurl.console import UserError
from aurl.vocab import VOCAB_SIZE

Mode = Literal["transformer", "vae", "vae_gan"]
MODES: tuple[str, ...] = typing.get_args(Mode)


@dataclass
class ModelConfig:
    """Architecture and loss settings of MusicTransformerVAEGAN."""

    mode: Mode = "transformer"
    """Which model: "transformer" (causal LM), "vae" (+ encoder and latent), "vae_gan" (+ discriminator)."""
    vocab_size: int = VOCAB_SIZE
    """Number of token ids; must equal aurl.vocab.VOCAB_SIZE (checkpoints refuse a mismatch)."""
    d_model: int = 256
    """Width of the residual stream of the decoder and encoder."""
    n_layers: int = 4
    """Decoder (causal) blocks."""
    n_heads: int = 4
    """Attention heads; d_model must divide by it (head size = d_model / n_heads, even for RoPE)."""
    d_ff: int = 1024
    """Hidden units of each block's feed-forward layer."""
    max_seq_len: int = 1024
    """Longest window trained on, in tokens; generation keeps at most this much context."""
    dropout: float = 0.1
    """Dropout on the residual branches (attention and feed-forward outputs) during training (0 = off)."""
    rope_base: float = 10000.0
    """RoPE frequency base (larger = slower-rotating, longer-range position channels)."""
    sounding_embedding: bool = False
    """Add the pitches sounding after each token (a multi-hot of 88, projected) to its embedding (off in files without it)."""
    sounding_output_bias: bool = False
    """Shift NOTE_ON / NOTE_OFF logits of sounding / silent pitches by two learned scalars (aurl.model.sounding_bias; off in files without it)."""
    grammar_unlikelihood: float = 0.0
    """Weight of -log(1 - P(tokens the grammar forbids next)) added to the training loss (0 = off; aurl.model.grammar_loss)."""

    # ---- vae
    latent_dim: int = 64
    """Size of the latent z (vae, vae_gan)."""
    encoder_layers: int = 2
    """Bidirectional encoder blocks that read the whole window into z (vae, vae_gan)."""
    kl_beta_max: float = 0.2
    """KL weight after the warm-up (MusicVAE keeps it at or below 0.2-0.5 against posterior collapse)."""
    kl_warmup_steps: int = 2000
    """Optimizer steps over which the KL weight rises linearly from 0 to kl_beta_max (0 = no warm-up)."""
    free_bits: float = 0.1
    """Nats per latent dimension that cost nothing: KL below this per dim is not penalized (0 = off)."""
    active_unit_threshold: float = 0.01
    """A latent dim counts as active when the variance of its posterior mean over windows exceeds this."""
    mu_bn_gamma: float = 0.0
    """BN-VAE (Zhu et al. 2020): mu batch-normalized then scaled by this; KL >= gamma^2/2 nats per dim (0 = off)."""
    word_dropout: float = 0.0
    """Share of the decoder's input tokens zeroed in vae training, so it must lean on z (0 = off; Bowman 2016)."""

    # ---- gan
    disc_d_model: int = 128
    """Width of the discriminator (vae_gan)."""
    disc_layers: int = 2
    """Bidirectional discriminator blocks (vae_gan)."""
    disc_heads: int = 4
    """Discriminator attention heads (vae_gan)."""
    adv_weight_max: float = 0.05
    """Weight of the generator's adversarial loss after its warm-up (vae_gan)."""
    adv_start_step: int = 0
    """Step at which the adversarial weight starts to rise from 0 (vae_gan)."""
    adv_warmup_steps: int = 1000
    """Steps over which the adversarial weight rises linearly to adv_weight_max (0 = at once)."""
    gumbel_tau: float = 1.0
    """Gumbel-softmax temperature of the straight-through fake tokens that carry G's adversarial gradient."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def is_vae(self) -> bool:
        return self.mode in ("vae", "vae_gan")

    @property
    def is_gan(self) -> bool:
        return self.mode == "vae_gan"

    def validate(self) -> ModelConfig:
        """Raise UserError naming the first bad field and its value; return self. The config checker
        (aurl.config) has checked types and choices of a YAML section already; a model file's config
        (aurl.model.checkpoint) is checked here alone, hence the mode check."""

        def bad(name: str, why: str):
            raise UserError(f"model.{name} = {getattr(self, name)!r}: {why}")

        if self.mode not in MODES:
            bad("mode", f"must be one of {', '.join(MODES)}")
        if self.vocab_size != VOCAB_SIZE:
            bad("vocab_size", f"must equal the vocabulary's size {VOCAB_SIZE}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff", "max_seq_len", "latent_dim", "disc_d_model",
                     "disc_layers", "disc_heads"):
            if int(getattr(self, name)) < 1:
                bad(name, "must be >= 1")
        if self.encoder_layers < 1 and self.is_vae:
            bad("encoder_layers", "must be >= 1 in vae modes")
        if self.d_model % self.n_heads or self.head_dim % 2:
            bad("n_heads", f"d_model {self.d_model} must split into n_heads heads of even size (RoPE)")
        if self.disc_d_model % self.disc_heads or (self.disc_d_model // self.disc_heads) % 2:
            bad("disc_heads", f"disc_d_model {self.disc_d_model} must split into disc_heads heads of even size")
        for name in ("dropout", "word_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "must be in [0, 1)")
        for name in ("kl_beta_max", "free_bits", "adv_weight_max", "active_unit_threshold", "mu_bn_gamma",
                     "grammar_unlikelihood"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for name in ("kl_warmup_steps", "adv_warmup_steps", "adv_start_step"):
            if getattr(self, name) < 0:
                bad(name, "must be >= 0")
        for name in ("sounding_embedding", "sounding_output_bias"):
            if not isinstance(getattr(self, name), bool):
                bad(name, "must be true or false")
        if self.gumbel_tau <= 0:
            bad("gumbel_tau", "must be > 0")
        if self.rope_base <= 1:
            bad("rope_base", "must be > 1")
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
