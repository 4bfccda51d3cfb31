"""Pictures are written, non-empty and valid PNGs; loss records load from JSONL and TensorBoard."""

from __future__ import annotations

import json

import pytest

from aurl.evaluate.plots import (
    load_loss_records,
    plot_loss_curves,
    plot_piano_roll,
    plot_piano_rolls,
    stage_offsets,
)
from aurl.score import Note, Score

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000, (path, len(data))


def fake_records():
    recs = []
    for stage, n, base in (("stage1", 30, 5.0), ("stage2", 20, 3.0), ("stage3", 10, 2.5)):
        for step in range(n):
            recs.append({"stage": stage, "step": step, "split": "train", "loss": base - 0.05 * step})
            if step % 10 == 9:
                recs.append({"stage": stage, "step": step, "split": "val", "loss": base - 0.04 * step})
    return recs


def test_stage_offsets_put_stages_back_to_back():
    recs = fake_records()
    assert stage_offsets(recs) == {"stage1": 0, "stage2": 30, "stage3": 50}
    # natural order: stage10 after stage2
    assert list(stage_offsets([{"stage": "stage10", "step": 1}, {"stage": "stage2", "step": 4}])) == [
        "stage2", "stage10"]
    # a global step counter (stage 2 continues at 30): already on one axis, nothing shifted
    glob = [{"stage": "stage1", "step": s} for s in range(30)] + [{"stage": "stage2", "step": s} for s in (30, 40)]
    assert stage_offsets(glob) == {"stage1": 0, "stage2": 0}


def test_loss_curves_from_jsonl(tmp_path):
    src = tmp_path / "losses.jsonl"
    lines = [json.dumps(r) for r in fake_records()] + ["", '{"stage": "stage3", "st']  # torn last line
    src.write_text("\n".join(lines))
    recs = load_loss_records(src)
    assert len(recs) == len(fake_records())
    out = plot_loss_curves(recs, tmp_path / "pics" / "loss.png")
    assert_png(out)



def test_trainer_records_give_a_recon_series(tmp_path):
    """The trainer's JSONL shape: numeric stage, train records with loss (total) and recon, val with loss."""
    src = tmp_path / "metrics.jsonl"
    rows = [{"stage": 2, "step": 1, "split": "train", "loss": 5.0, "recon": 4.0, "kl": 9.0, "lr": 1e-3},
            {"stage": 2, "step": 2, "split": "val", "loss": 4.2, "best": 4.2}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recs = load_loss_records(src)
    assert [(r["split"], r.get("metric", "loss"), r["loss"]) for r in recs] == [
        ("train", "loss", 5.0), ("train", "recon", 4.0), ("val", "loss", 4.2)]
    assert_png(plot_loss_curves(recs, tmp_path / "loss.png"))
    assert_png(plot_loss_curves(recs, tmp_path / "total.png", metric="loss"))

def test_jsonl_records_keep_finite_losses_and_add_recon_only_to_the_total(tmp_path):
    """A record whose loss is not a finite number is skipped (a diverged step, a null); the recon record is
    added beside a total loss only (a record that names its metric already is one curve), and only if finite."""
    src = tmp_path / "metrics.jsonl"
    rows = [{"stage": 1, "step": 1, "split": "train", "loss": 5.0, "recon": float("inf")},
            {"stage": 1, "step": 2, "split": "train", "loss": float("nan"), "recon": 4.0},
            {"stage": 1, "step": 3, "split": "train", "loss": None},
            {"stage": 1, "step": 4, "split": "val", "loss": 4.5, "metric": "loss", "recon": 4.4},
            {"stage": 1, "step": 5, "split": "train", "loss": 4.0, "recon": 3.5}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = [(r["step"], r.get("metric", "loss"), r["loss"]) for r in load_loss_records(src)]
    assert got == [(1, "loss", 5.0), (4, "loss", 4.5), (5, "loss", 4.0), (5, "recon", 3.5)]


def test_stage_offsets_never_shift_a_stage_back_and_put_named_stages_last():
    recs = [{"stage": "stage1", "step": s} for s in range(10)] + [{"stage": "stage2", "step": s} for s in (50, 60)]
    assert stage_offsets(recs) == {"stage1": 0, "stage2": 0}  # a gap after stage1: left where it is
    named = [{"stage": "finetune", "step": 0}, {"stage": "stage3", "step": 0}, {"stage": "stage1", "step": 4}]
    assert list(stage_offsets(named)) == ["stage1", "stage3", "finetune"]
    assert stage_offsets(named) == {"stage1": 0, "stage3": 5, "finetune": 6}


def test_loss_curves_with_no_records(tmp_path):
    assert_png(plot_loss_curves([], tmp_path / "empty.png"))
    assert load_loss_records(tmp_path / "missing") == []


def test_loss_records_from_tensorboard(tmp_path):
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import SummaryWriter

    for stage, base in (("stage1", 5.0), ("stage2", 3.0)):
        w = SummaryWriter(str(tmp_path / "tb" / stage))
        for step in range(5):
            w.add_scalar("train/loss", base - step * 0.1, step)
            w.add_scalar("train/lr", 1e-3, step)
        w.add_scalar("val/loss", base - 0.3, 4)
        w.add_scalar("recon/validation", base - 0.2, 4)  # another loss, split named second
        w.add_scalar("train/loss", float("nan"), 5)  # a diverged step: no point to draw
        w.close()
    recs = load_loss_records(tmp_path / "tb")
    assert sum(r.get("metric") == "recon" and r["split"] == "val" for r in recs) == 2
    recs = [r for r in recs if r["metric"] == "loss"]
    assert {(r["stage"], r["split"]) for r in recs} == {("stage1", "train"), ("stage1", "val"),
                                                        ("stage2", "train"), ("stage2", "val")}
    assert len(recs) == 12
    assert_png(plot_loss_curves(recs, tmp_path / "loss.png"))


def test_piano_rolls(tmp_path):
    notes = [Note(60 + (i % 12), 0.25 * i, 0.25 * i + 0.5, 80) for i in range(40)]
    assert_png(plot_piano_roll(notes, tmp_path / "roll.png", title="notes"))
    score = Score.from_notes(notes)
    assert_png(plot_piano_rolls([score, Score()], tmp_path / "rolls.png", ["a score", "empty"]))
