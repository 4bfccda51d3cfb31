"""What the audio and report tests share: the Debian packages they need, a tiny model and cache.

Imported by name (tests/ is on sys.path under pytest's default import mode), like midi_factory.
"""

from __future__ import annotations

from pathlib import Path

# what the tests install (README: Listen and look); fluid-soundfont-gm sounds better but is 142 MB
AUDIO_PACKAGES = ["fluidsynth", "timgm6mb-soundfont"]
BROWSER_PACKAGES = ["chromium"]


def build_tiny_run(root: Path) -> Path:
    """A run folder laid out like the trainer's: RUN/cache (8 little pieces, 3 for validation) and
    RUN/checkpoints/best_model.pt (an untrained transformer: its samples are still real MIDI)."""
    import torch
    from midi_factory import write_simple_midi

    from aurl.data.cache import build
    from aurl.model import ModelConfig, MusicTransformerVAEGAN, save_model_file

    for i in range(8):
        write_simple_midi(root / "midi" / f"piece{i}.mid", seed=i, n_notes=30)
    build(root / "midi", root / "cache", val_fraction=0.4, split_seed=3, workers=0, progress=False)
    cfg = ModelConfig(mode="transformer", d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64, dropout=0.0)
    torch.manual_seed(0)
    save_model_file(root / "checkpoints" / "best_model.pt", MusicTransformerVAEGAN(cfg), cfg, {"val_loss": 1.0},
                    {"step": 7, "stage": "stage1"})
    return root
