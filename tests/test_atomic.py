"""aurl.atomic: a write replaces the file whole or not at all. A failed write leaves the old file and no temp
file behind; the new file gets open()'s mode (0666 less the umask), not mkstemp's 0600."""

from __future__ import annotations

import json
import os

import pytest
import torch

from aurl import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    """Mutation: the temp file not unlinked on failure -> fails (a .state.json.*.tmp is left)."""
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"step": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write_json(target, {"step": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_the_file_gets_open_s_mode_and_the_folders_are_made(tmp_path):
    """Mutation: the fchmod left out (mkstemp's 0600) -> fails."""
    old = os.umask(0o022)
    try:
        atomic.atomic_write_text(tmp_path / "a" / "b" / "notes.txt", "x")
        atomic.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "b" / "notes.txt").read_text() == "x"
    assert (tmp_path / "a" / "b" / "notes.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "w.pt").stat().st_mode & 0o777 == 0o644
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.arange(3))
