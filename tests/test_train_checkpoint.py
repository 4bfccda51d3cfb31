"""aurl.train.checkpoint: the commit protocol (staging -> rename -> state file -> purge) and that resume only
ever sees committed checkpoints."""

from __future__ import annotations

import torch
from conftest import spy_on_the_disk

from aurl.model import MusicTransformerVAEGAN
from aurl.model.config import ModelConfig
from aurl.train import checkpoint as ckpt


def _accelerator_and_model():
    from accelerate import Accelerator

    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=32))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, opt = acc.prepare(model, opt)
    return acc, model, opt


def test_commit_protocol_keeps_k_and_calls_on_commit_after_rename(tmp_path):
    acc, model, _ = _accelerator_and_model()
    seen = []

    def on_commit(path):
        assert ckpt.is_committed(path)  # the state file is updated only after the rename
        seen.append(path.name)

    for step in (1, 2, 3, 4):
        ckpt.save(acc, tmp_path, step, {"epoch": 0, "batch": step}, on_commit=on_commit, keep=2)
    assert seen == [ckpt.step_name(s) for s in (1, 2, 3, 4)]
    assert [p.name for p in ckpt.committed(tmp_path)] == [ckpt.step_name(3), ckpt.step_name(4)]
    assert ckpt.read_meta(tmp_path / ckpt.step_name(4))["batch"] == 4
    assert not list(tmp_path.glob(ckpt.STAGING_PREFIX + "*"))


def test_half_written_checkpoints_are_never_loaded(tmp_path):
    acc, model, _ = _accelerator_and_model()
    good = ckpt.save(acc, tmp_path, 2, {"epoch": 0, "batch": 2})
    # a save killed before its rename, and a step dir without its meta.json
    staging = tmp_path / (ckpt.STAGING_PREFIX + ckpt.step_name(5))
    staging.mkdir()
    (staging / "meta.json").write_text("{}")
    (tmp_path / ckpt.step_name(7)).mkdir()
    assert not ckpt.is_committed(staging) and ckpt.is_committed(good)  # a whole meta.json, never renamed
    assert ckpt.committed(tmp_path) == [good]
    assert ckpt.latest(tmp_path, recorded=str(good)) == good
    assert ckpt.latest(tmp_path, recorded=str(tmp_path / ckpt.step_name(7))) == good
    assert ckpt.latest(tmp_path, recorded=None) == good
    # the next save clears the stale staging dir
    ckpt.save(acc, tmp_path, 3, {"epoch": 0, "batch": 3})
    assert not staging.exists()


def test_newest_commit_wins_over_a_stale_state_record(tmp_path):
    """Killed between the rename and the state-file write: the newer committed checkpoint is used."""
    acc, model, _ = _accelerator_and_model()
    old = ckpt.save(acc, tmp_path, 1, {"epoch": 0, "batch": 1})
    new = ckpt.save(acc, tmp_path, 2, {"epoch": 0, "batch": 2})
    assert ckpt.latest(tmp_path, recorded=str(old)) == new


def test_save_and_load_round_trip_weights(tmp_path):
    acc, model, opt = _accelerator_and_model()
    path = ckpt.save(acc, tmp_path, 1, {"epoch": 0, "batch": 1})
    before = {k: v.clone() for k, v in acc.unwrap_model(model).state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    acc.load_state(str(path))
    after = acc.unwrap_model(model).state_dict()
    assert len(before) == len(after) > 0 and all(torch.equal(before[k], after[k]) for k in before)


def test_a_save_redone_after_a_crash_replaces_what_the_crash_left(tmp_path):
    """A save killed before its rename leaves a staging dir with part of a checkpoint: the same step saved
    again commits none of it. A step committed before a crash and saved again after the resume is replaced.
    Mutations: the stale staging dir not removed first -> fails (FileExistsError); the committed step not
    removed before the rename -> fails (os.replace onto a non-empty folder)."""
    acc, model, _ = _accelerator_and_model()
    staging = tmp_path / (ckpt.STAGING_PREFIX + ckpt.step_name(5))
    staging.mkdir()
    (staging / "stale.bin").write_bytes(b"half a checkpoint")
    path = ckpt.save(acc, tmp_path, 5, {"epoch": 0, "batch": 5})
    assert not staging.exists() and not (path / "stale.bin").exists() and ckpt.read_meta(path)["batch"] == 5
    again = ckpt.save(acc, tmp_path, 5, {"epoch": 0, "batch": 6})
    assert again == path and ckpt.committed(tmp_path) == [path] and ckpt.read_meta(path)["batch"] == 6


def test_the_commit_reaches_the_disk_before_the_state_file_points_at_it(tmp_path, monkeypatch):
    """meta.json is fsynced before the staging dir is renamed, and the stage folder after the rename, before
    on_commit (the state-file update) runs: the state file never points at a rename a power cut can undo.
    Spies that call the real os.fsync / os.replace. Mutation: save() without _fsync_dir(stage_dir) -> fails."""
    acc, model, _ = _accelerator_and_model()
    events = spy_on_the_disk(monkeypatch)
    path = ckpt.save(acc, tmp_path, 1, {"epoch": 0, "batch": 1},
                     on_commit=lambda p: events.append(("on_commit", p.stat().st_ino)))
    monkeypatch.undo()
    meta, step_dir, stage_dir = (path / ckpt.META).stat().st_ino, path.stat().st_ino, tmp_path.stat().st_ino
    rename = events.index(("replace", step_dir))
    assert ("fsync", meta) in events[:rename]
    assert events[rename + 1 :] == [("fsync", stage_dir), ("on_commit", step_dir)]


def test_extra_state_is_committed_with_the_checkpoint_and_its_absence_refused(tmp_path):
    """`extra` (the discriminator kept outside a DeepSpeed engine) is written inside the commit and restored
    by load_extra; a checkpoint without it cannot resume a run that needs it. Mutations: save() not writing
    extra_state.pt -> fails; load_extra returning quietly when the file is missing -> fails."""
    import pytest

    from aurl.console import UserError

    acc, model, _ = _accelerator_and_model()
    disc = torch.nn.Linear(3, 2)
    saved = {k: v.clone() for k, v in disc.state_dict().items()}
    path = ckpt.save(acc, tmp_path, 1, {"epoch": 0, "batch": 1}, extra={"disc": disc})
    with torch.no_grad():
        disc.weight.add_(1.0)
    ckpt.load_extra(path, {"disc": disc})
    assert len(saved) == 2 and all(torch.equal(saved[k], v) for k, v in disc.state_dict().items())
    plain = ckpt.save(acc, tmp_path, 2, {"epoch": 0, "batch": 2})
    with pytest.raises(UserError, match=ckpt.EXTRA):
        ckpt.load_extra(plain, {"disc": disc})
    ckpt.load_extra(plain, None)  # a run without extra state reads nothing
