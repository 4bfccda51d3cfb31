"""aurl.train.schedule: the learning rate as a pure function of the optimizer step."""

from __future__ import annotations

import pytest

from aurl.train.schedule import lr_at


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 10, 110, 0.1) for s in range(120)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[110] == pytest.approx(0.1) and lrs[119] == pytest.approx(0.1)
