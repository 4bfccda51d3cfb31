"""Probes of the augment: aurl.data.augment.augment_tokens at fixed (seed, epoch, index) draws, and one real run.

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from config_probes import (
    keys_of,
    probe,
    rejects,
    run_probe,
)
from midi_factory import random_score

from aurl import codec
from aurl.config import build_config
from aurl.console import UserError
from aurl.data.augment import AugmentConfig, augment_tokens, sample_rng

ALL_OFF = dict(transpose_prob=0.0, stretch_prob=0.0, velocity_prob=0.0, instrument_prob=0.0, swing_prob=0.0,
               humanize_prob=0.0)


def windows(cfg: AugmentConfig, n: int = 8) -> list[np.ndarray]:
    """Sample i of epoch 0 (seed 0) of a multi-instrument, many-velocity piece, augmented with cfg."""
    out = []
    for i in range(n):
        toks = codec.encode(random_score(i, n_notes=120, n_programs=4))[:256]
        out.append(augment_tokens(toks, cfg, sample_rng(0, 0, i, stream=1), start_clock=lambda: 5)[0])
    return out


def aug_differs(key: str, a, b, **on) -> None:
    name = key.split(".")[1]
    wa = windows(AugmentConfig(**{"enabled": True, **ALL_OFF, **on, name: a}))
    wb = windows(AugmentConfig(**{"enabled": True, **ALL_OFF, **on, name: b}))
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)), \
        f"{key}: {a} and {b} give the same augmented windows"


def aug_rejects(key: str, value, **kw) -> None:
    with pytest.raises(UserError, match=key.split(".")[1]):
        build_config({"augment": {"enabled": True, **kw, key.split(".")[1]: value}})


@probe("augment.enabled")
def _(lab, key):
    on = {**{k: 1.0 for k in ALL_OFF}}
    aug_differs(key, False, True, **on)
    # and in the trainer: the training windows (so the losses) change; validation windows never augment
    base, r = lab.base(), lab.run(f"{key}=true")
    assert r.train()[1] != base.train()[1]
    rejects(key, "yes")


# augment keys: (value a, value b) whose windows differ, with the other settings that make the key matter;
# then a value that is refused, with the settings that make it invalid
AUGMENT_PROBES = {
    "augment.transpose_prob": ((0.0, 1.0), {}, 1.5, {}),
    "augment.transpose_max": ((1, 6), {"transpose_prob": 1.0}, -1, {}),
    "augment.stretch_prob": ((0.0, 1.0), {}, -0.5, {}),
    "augment.stretch_min": ((0.5, 0.9), {"stretch_prob": 1.0, "stretch_max": 1.0}, 2.0, {"stretch_max": 1.5}),
    "augment.stretch_max": ((1.1, 2.0), {"stretch_prob": 1.0, "stretch_min": 1.0}, 0.5, {"stretch_min": 0.8}),
    "augment.velocity_prob": ((0.0, 1.0), {}, 2.0, {}),
    "augment.velocity_min": ((0.5, 0.9), {"velocity_prob": 1.0, "velocity_max": 1.0}, 0.0, {}),
    "augment.velocity_max": ((1.1, 1.5), {"velocity_prob": 1.0, "velocity_min": 1.0}, 0.5, {"velocity_min": 0.8}),
    "augment.instrument_prob": ((0.0, 1.0), {}, 1.1, {}),
    "augment.instrument_mode": (("group", "any"), {"instrument_prob": 1.0}, "family", {}),
    "augment.swing_prob": ((0.0, 1.0), {"swing_max": 0.5}, -1.0, {}),
    "augment.swing_max": ((0.1, 0.6), {"swing_prob": 1.0}, 1.0, {}),
    "augment.swing_beat_steps": ((32, 12), {"swing_prob": 1.0, "swing_max": 0.6}, 1, {}),
    "augment.humanize_prob": ((0.0, 1.0), {}, 1.5, {}),
    "augment.humanize_steps": ((1, 4), {"humanize_prob": 1.0}, -1, {}),
}


@probe(*AUGMENT_PROBES)
def _(lab, key):
    (a, b), context, bad, bad_context = AUGMENT_PROBES[key]
    aug_differs(key, a, b, **context)
    aug_rejects(key, bad, **bad_context)


@pytest.mark.parametrize("key", keys_of("augment"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
