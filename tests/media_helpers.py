"""What the audio and report tests share: Debian packages installed on demand, a tiny model and cache.

Imported by name (tests/ is on sys.path under pytest's default import mode), like midi_factory.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

# what the tests install (README: Listen and look); fluid-soundfont-gm sounds better but is 142 MB
AUDIO_PACKAGES = ["fluidsynth", "timgm6mb-soundfont"]
BROWSER_PACKAGES = ["chromium"]
_updated = False


def ensure_debian_packages(packages: list[str], commands: list[str]) -> None:
    """apt-get install `packages` unless every command in `commands` is on PATH (CI starts from a bare Debian
    12 as root). Elsewhere, without them, the calling test is skipped with the reason."""
    global _updated
    if all(shutil.which(c) for c in commands):
        return
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        pytest.skip(f"{', '.join(commands)} not installed and no root apt-get to install {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmds = [] if _updated else [["apt-get", "update", "-qq"]]
    cmds.append(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages])
    t0 = time.time()
    for cmd in cmds:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed (rc {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    _updated = True
    print(f"installed {' '.join(packages)} in {time.time() - t0:.0f} s")


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
