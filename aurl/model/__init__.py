"""The model: MusicTransformerVAEGAN (transformer | vae | vae_gan), its config, transfer and checkpoints."""

from aurl.model.checkpoint import init_from_model_file, load_model_file, load_model_state, save_model_file
from aurl.model.config import ModelConfig
from aurl.model.transfer import TransferReport, transfer_weights
from aurl.model.vaegan import ModelOutput, MusicTransformerVAEGAN

__all__ = [
    "ModelConfig",
    "ModelOutput",
    "MusicTransformerVAEGAN",
    "TransferReport",
    "init_from_model_file",
    "load_model_file",
    "load_model_state",
    "save_model_file",
    "transfer_weights",
]
