"""The model: MusicTransformerVAEGAN (transformer | vae | vae_gan), its config, transfer and checkpoints."""

from aurl.model.config import ModelConfig
from aurl.model.vaegan import ModelOutput, MusicTransformerVAEGAN

__all__ = ["ModelConfig", "ModelOutput", "MusicTransformerVAEGAN"]
