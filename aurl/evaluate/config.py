"""The evaluation options, owned here once: the evaluate CLI's flags (python -m aurl.evaluate) and, with a
stage's defaults and its `enabled` switch, a stage YAML's `eval` section (aurl.config.StageEvalConfig, passed
as is to the stage-end evaluation). Imports nothing heavy, so that aurl/config.py can embed it; the range
checks are aurl.config.check_eval_options, for both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """What evaluate_model does: the evaluate CLI's flags; a stage YAML's `eval` section (aurl.config.StageEvalConfig)."""

    num_samples: int = 8
    """Generated samples (0 = skip generation and the music metrics)."""
    length: int = 512
    """New tokens per sample after START; also the token length of the data excerpts compared with them."""
    seed: int = 0
    """Seed of sampling and of the vae posterior samples of the validation bound."""
    temperature: float = 1.0
    """Sampling temperature (1 = the model's distribution)."""
    top_k: int = 0
    """Sample among the k likeliest tokens (0 = off)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    grammar: bool = True
    """Grammar-constrained decoding (aurl.model.sampling); False samples the raw distribution, so the grammar
    figures then measure what the model itself has learned."""
    max_val_tokens: int = 0
    """Cap on validation target tokens (0 = all validation pieces); a small budget for stage ends."""
    batch_size: int = 8
    """Windows per forward pass in the validation pass."""
    max_data_excerpts: int = 256
    """Cap on validation excerpts whose metrics form the data distribution (spread evenly over pieces)."""
    pictures: bool = True
    """Write piano-roll PNGs (and loss curves when loss records are given)."""
    audio: bool = True
    """Render samples and reference excerpts to WAV (aurl.evaluate.audio; skipped with one warning when no
    synthesizer is installed)."""

    def validate(self) -> EvalConfig:
        """Range checks, naming the evaluate CLI's flags (aurl.config.check_eval_options, the one check)."""
        from aurl.config import check_eval_options

        check_eval_options(self, lambda key: "--" + key.replace("_", "-"))
        return self
