"""aurl.train.schedule: the learning rate as a pure function of the optimizer step."""

from __future__ import annotations

import math

import pytest

from aurl.train.schedule import lr_at


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 10, 110, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)


@pytest.mark.parametrize("step, progress", [(10, 0.0), (35, 0.25), (60, 0.5), (85, 0.75), (110, 1.0)],
                         ids=["peak", "quarter", "half", "three-quarters", "end"])
def test_lr_decay_is_a_cosine_from_the_first_step_after_warmup(step, progress):
    """The decay starts at the peak on the first step after warm-up and follows half a cosine, so at a quarter
    of it the lr is 0.1 + 0.9 * (1 + cos(pi / 4)) / 2 = 0.868 (a straight line would give 0.775). The values
    are the formula's own, so only float rounding (below 1e-15 here) may differ: rel=1e-12.
    Mutations: a linear decay -> quarter/three-quarters fail; progress counted from step - warmup + 1 -> peak
    fails (0.9998 instead of 1.0)."""
    want = 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))
    assert lr_at(step, 1.0, 10, 110, 0.1) == pytest.approx(want, rel=1e-12)
