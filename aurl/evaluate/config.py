"""The evaluation options, owned here once: EvalConfig, the evaluate CLI's flags (python -m aurl.evaluate), and
StageEvalConfig, the same options with a stage's defaults and its `enabled` switch: a stage YAML's `eval`
section, passed as is to the stage-end evaluation. Imports nothing heavy, so that aurl/config.py can embed
it; the range checks are aurl.config.check_eval_options, for both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class EvalConfig:
    """What evaluate_model does: the evaluate CLI's flags; a stage YAML's `eval` section (StageEvalConfig)."""

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


@dataclass
class StageEvalConfig(EvalConfig):
    """The evaluation at the end of a completed stage: rank 0 evaluates the stage's best model with
    aurl.evaluate on a small budget and writes <output-dir>/eval/stageN (report, samples, pictures).
    The options are EvalConfig's; a stage changes three defaults and adds `enabled`.
    The seed is train.seed; the keys of NOT_STAGE_KEYS are the evaluate CLI's alone (aurl.config refuses them)."""

    num_samples: int = 4
    """Generated samples (0 = validation likelihood only)."""
    length: int = 256
    """New tokens per sample after START."""
    max_val_tokens: int = 20000
    """Cap on validation target tokens (0 = the whole validation split)."""
    enabled: bool = True
    """Evaluate at the end of the stage (false = skip; `python -m aurl.evaluate` can run it later)."""


# EvalConfig's options a stage YAML refuses, each with why (one line naming the key)
NOT_STAGE_KEYS = {
    "eval.seed": "the stage-end evaluation samples with train.seed (python -m aurl.evaluate --seed for another)",
    "eval.batch_size": "the stage-end evaluation validates 8 windows per pass (python -m aurl.evaluate "
                       "--batch-size sets it)",
    "eval.audio": "the stage end renders WAVs when FluidSynth is installed (python -m aurl.evaluate --no-audio "
                  "renders none)",
}
