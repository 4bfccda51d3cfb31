"""aurl.atomic: a write replaces the file whole or not at all. A failed write leaves the old file and no temp
file behind; the new file gets open()'s mode (0666 less the umask), not mkstemp's 0600."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import spy_on_the_disk

from aurl import atomic


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["OSError", "Ctrl-C"])
def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch, error):
    """Mutations: the temp file not unlinked on failure -> fails (a .state.json.*.tmp is left); cleaned up
    on Exception only -> the Ctrl-C case fails; the temp file made in the system temp folder (mkstemp without
    dir=) -> fails (os.replace across filesystems is not a rename, and is not atomic)."""
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"step": 1})
    temp_files = []

    def crash(src, dst):
        temp_files.append(Path(src))
        raise error

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(type(error)):
        atomic.atomic_write_json(target, {"step": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"step": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]
    assert [p.parent for p in temp_files] == [tmp_path] and not temp_files[0].exists()


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_the_file_gets_open_s_mode_and_the_folders_are_made(tmp_path, umask, mode):
    """Mutations: the fchmod left out (mkstemp's 0600) -> fails; the mode fixed at 0644 whatever the umask
    -> the 0027 case fails."""
    old = os.umask(umask)
    try:
        atomic.atomic_write_text(tmp_path / "a" / "b" / "notes.txt", "x")
        atomic.atomic_torch_save({"w": torch.arange(3)}, tmp_path / "w.pt")
    finally:
        os.umask(old)
    assert (tmp_path / "a" / "b" / "notes.txt").read_text() == "x"
    assert (tmp_path / "a" / "b" / "notes.txt").stat().st_mode & 0o777 == mode
    assert (tmp_path / "w.pt").stat().st_mode & 0o777 == mode
    assert torch.equal(torch.load(tmp_path / "w.pt", weights_only=True)["w"], torch.arange(3))


def test_the_bytes_reach_the_disk_before_the_rename_and_the_rename_after_it(tmp_path, monkeypatch):
    """The temp file is fsynced before os.replace puts it in place (else a power cut can leave the new name
    on empty blocks), and the folder after it (else the rename itself can be lost). Spies that call the real
    functions. Mutations: the file's os.fsync left out -> fails; the _fsync_dir after the rename left out
    -> fails."""
    events = spy_on_the_disk(monkeypatch)
    target = tmp_path / "state.json"
    atomic.atomic_write_json(target, {"step": 3})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"step": 3}
    file, folder = target.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file), ("replace", file), ("fsync", folder)]
