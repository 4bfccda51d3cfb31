"""The evaluate command on a tiny real checkpoint and a tiny real cache (both built here, no mocks)."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from midi_factory import write_simple_midi

from aurl import vocab
from aurl.console import UserError
from aurl.data.cache import build
from aurl.data.token_cache import TokenCache
from aurl.evaluate import EvalConfig, evaluate_checkpoint, evaluate_model, format_report, latest_eval
from aurl.evaluate.__main__ import main
from aurl.evaluate.likelihood import validation_nll
from aurl.evaluate.metrics import METRIC_NAMES
from aurl.evaluate.samples import data_excerpts
from aurl.evaluate.status import eval_reports
from aurl.model import ModelConfig, MusicTransformerVAEGAN, save_model_file

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_cfg(mode: str) -> ModelConfig:
    return ModelConfig(mode=mode, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64, dropout=0.0,
                       latent_dim=4, encoder_layers=1, disc_d_model=16, disc_layers=1, disc_heads=2)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder laid out like the trainer's: cache/, checkpoints/best_model.pt, checkpoints/vae.pt."""
    root = tmp_path_factory.mktemp("run")
    for i in range(8):
        write_simple_midi(root / "midi" / f"piece{i}.mid", seed=i, n_notes=30)
    build(root / "midi", root / "cache", val_fraction=0.4, split_seed=3, workers=0, progress=False)
    assert TokenCache.open(root / "cache").val_pieces, "the split must give validation pieces"
    torch.manual_seed(0)
    for name, mode in (("best_model", "transformer"), ("vae", "vae")):
        cfg = tiny_cfg(mode)
        save_model_file(root / "checkpoints" / f"{name}.pt", MusicTransformerVAEGAN(cfg), cfg, {"val_loss": 1.0},
                        {"step": 7, "stage": "stage1"})
    return root


def test_cli_writes_json_midi_and_pictures(run_dir, capsys):
    ckpt = run_dir / "checkpoints" / "best_model.pt"
    rc = main(["--checkpoint", str(ckpt), "--num-samples", "3", "--length", "48", "--seed", "1"])
    assert rc == 0
    out = run_dir / "eval" / "best_model"  # default: RUN/eval/<checkpoint name>, cache found above the file
    text = (out / "eval.json").read_text()
    assert "NaN" not in text and "Infinity" not in text  # strict JSON: undefined metrics are null
    report = json.loads(text)
    v = report["validation"]
    assert v["kind"] == "exact" and v["tokens"] > 0 and v["notes"] > 0 and v["seconds"] > 0
    # an untrained model is near uniform over the vocabulary
    assert abs(v["nll_per_token"] - math.log(vocab.VOCAB_SIZE)) < 0.5
    assert v["nll_per_note"] == pytest.approx(v["nll_per_token"] * v["tokens"] / v["notes"])
    assert v["bits_per_second"] == pytest.approx(v["nll_per_token"] * v["tokens"] / math.log(2) / v["seconds"])
    s = report["samples"]
    assert s["num"] == 3 and 0 <= s["valid_midi_share"] <= 1 and s["finalized_grammar_errors"] == 0
    assert set(report["metrics"]) == set(METRIC_NAMES)
    for m in report["metrics"].values():
        assert {"data", "samples", "overlap"} <= set(m)
    assert report["stage"] == "stage1" and report["step"] == 7
    # which data the numbers are against: the cache's fingerprint, to compare reports across runs
    assert report["cache_fingerprint"] == TokenCache.open(run_dir / "cache").fingerprint is not None
    assert len(s["files"]) == 3 and all((out / f"sample_{i:03d}.mid").is_file() for i in range(3))
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 5  # 3 samples + data vs samples + metric histograms
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 2000
    printed = capsys.readouterr().out
    assert "NLL per token" in printed and "bits per second" in printed and "pitch_class_entropy" in printed



def test_stage_end_call_finds_the_trainers_metrics_jsonl(run_dir, tmp_path):
    """The trainer's call: keyword overrides, loss curves from RUN/logs/metrics.jsonl, --status summary."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    for f in (run_dir / "checkpoints").glob("best_model.*"):
        shutil.copy(f, run / "checkpoints" / f.name)
    (run / "logs").mkdir()
    lines = [{"stage": st, "step": s, "split": sp, "loss": 6.0 - 0.1 * s, "lr": 1e-3}
             for st in ("stage1", "stage2") for s in range(5) for sp in ("train", "val")]
    (run / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert latest_eval(run) is None
    r = evaluate_checkpoint(run / "checkpoints" / "best_model.pt", run_dir / "cache", num_samples=1, length=16,
                            seed=3, max_val_tokens=50)
    assert r["eval_config"]["num_samples"] == 1 and r["eval_config"]["seed"] == 3
    assert r["validation"]["tokens"] == 50
    out = run / "eval" / "best_model"
    assert (out / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC
    info = latest_eval(run)
    assert info["json"] == str(out / "eval.json") and str(out / "loss_curves.png") in info["pictures"]
    assert info["stage"] == "stage1" and set(info["quality_bar"]) and info["nll_per_token"] > 0
    assert info["nll_kind"] == "exact" and eval_reports(run) == [info]
    with pytest.raises(UserError, match="--length"):
        evaluate_checkpoint(run / "checkpoints" / "best_model.pt", run_dir / "cache", length=0)

def test_evaluation_feeds_at_most_the_trained_window(run_dir, tmp_path):
    """A model trained on 24-token windows (max_seq_len 64) is evaluated with 24 tokens of context: RoPE
    positions it never saw are not scored."""
    cfg = tiny_cfg("transformer")
    torch.manual_seed(0)
    ckpt = save_model_file(tmp_path / "checkpoints" / "short.pt", MusicTransformerVAEGAN(cfg), cfg, seq_len=24)
    r = evaluate_checkpoint(ckpt, run_dir / "cache", EvalConfig(num_samples=1, length=8, pictures=False),
                            out_dir=tmp_path / "eval")
    assert r["context"] == 24 and r["validation"]["tokens"] > 24, (r["context"], r["validation"])


def test_same_seed_same_report(run_dir, tmp_path):
    cfg = EvalConfig(num_samples=2, length=32, seed=5, pictures=False)
    ckpt = run_dir / "checkpoints" / "vae.pt"
    a = evaluate_checkpoint(ckpt, run_dir / "cache", cfg, out_dir=tmp_path / "a")
    evaluate_checkpoint(ckpt, run_dir / "cache", cfg, out_dir=tmp_path / "b")
    assert a["validation"]["kind"] == "elbo_bound"
    assert a["validation"]["nll_per_token"] == pytest.approx(
        a["validation"]["recon_per_token"] + a["validation"]["kl_per_token"])
    assert json.loads((tmp_path / "a" / "eval.json").read_text())["metrics"] == \
        json.loads((tmp_path / "b" / "eval.json").read_text())["metrics"]
    assert (tmp_path / "a" / "sample_001.mid").read_bytes() == (tmp_path / "b" / "sample_001.mid").read_bytes()
    assert not list((tmp_path / "a").glob("*.png"))
    assert "upper bound" in format_report(a)


def test_validation_nll_equals_the_models_own_loss(run_dir):
    cache = TokenCache.open(run_dir / "cache")
    cfg = tiny_cfg("transformer")
    torch.manual_seed(1)
    model = MusicTransformerVAEGAN(cfg).eval()
    got = validation_nll(model, cache, EvalConfig(batch_size=3), "cpu")
    total = tokens = 0.0
    with torch.no_grad():
        for piece in cache.val_pieces:
            toks = torch.from_numpy(np.asarray(cache.tokens(piece)).astype(np.int64))
            for s in range(0, len(toks) - 1, cfg.max_seq_len):
                w = toks[s : s + cfg.max_seq_len][None]
                if w.shape[1] < 2:
                    continue
                n = w.shape[1] - 1
                total += float(model(w, torch.ones_like(w, dtype=torch.bool)).metrics["recon"]) * n
                tokens += n
    assert got["tokens"] == tokens
    assert got["nll_per_token"] == pytest.approx(total / tokens, rel=1e-5)
    capped = validation_nll(model, cache, EvalConfig(max_val_tokens=100), "cpu")
    assert capped["tokens"] == 100 and capped["windows"] == 2  # 63 + 37 targets


def test_evaluate_model_in_memory_with_loss_curves(run_dir, tmp_path):
    cache = TokenCache.open(run_dir / "cache")
    model = MusicTransformerVAEGAN(tiny_cfg("vae_gan"))
    losses = [{"stage": "stage1", "step": s, "split": "train", "loss": 6.0 - 0.1 * s} for s in range(10)]
    r = evaluate_model(model, cache, EvalConfig(num_samples=1, length=16), out_dir=tmp_path, losses=losses)
    assert (tmp_path / "loss_curves.png").read_bytes()[:8] == PNG_MAGIC
    assert str(tmp_path / "loss_curves.png") in r["pictures"]
    assert model.training  # evaluation hands the model back in the mode it found it


def test_data_excerpts_match_the_sample_length(run_dir):
    cache = TokenCache.open(run_dir / "cache")
    ex = data_excerpts(cache, 40, 1000)
    expected = sum(len([s for s in range(0, p["length"] - 1, 41) if s == 0 or p["length"] - s > 20])
                   for p in cache.val_pieces)
    assert len(ex) == expected and all(e.num_notes > 0 for e in ex)
    assert all(len(e.tempo_bpm) >= 1 for e in ex)  # excerpts from inside a piece keep their tempo
    assert len(data_excerpts(cache, 40, 3)) == 3


@pytest.mark.parametrize("args, match", [
    (["--checkpoint", "{run}/checkpoints/missing.pt"], "no such file"),
    (["--checkpoint", "{run}/checkpoints/best_model.pt", "--cache", "{run}/nocache"], "no token cache"),
    (["--checkpoint", "{run}/checkpoints/best_model.pt", "--length", "0"], "--length"),
    (["--checkpoint", "{run}/checkpoints/best_model.pt", "--max-val-tokens", "-1"],
     "--max-val-tokens must be >= 0, got -1"),
], ids=["missing-checkpoint", "missing-cache", "bad-length", "bad-max-val-tokens-named-as-typed"])
def test_bad_input_is_one_line_and_exit_2(run_dir, capsys, args, match):
    assert main([a.format(run=run_dir) for a in args]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_flag_errors_are_one_line_and_exit_2(capsys):
    for argv in ([], ["--checkpoint", "x.pt", "--num-samples", "many"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert "error" in err and len(err.strip().splitlines()) == 1


def test_the_stage_end_budget_is_the_one_the_readme_states():
    """README (Stage-end evaluation): "4 samples of 256 tokens, 20,000 validation tokens" by default."""
    import re
    from pathlib import Path

    from aurl.evaluate.config import StageEvalConfig

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"\((\d+) samples of (\d+) tokens, ([\d,]+) validation tokens\)", readme)
    assert found, "README no longer states the stage-end budget"
    stated = (int(found.group(1)), int(found.group(2)), int(found.group(3).replace(",", "")))
    default = StageEvalConfig()
    assert (default.num_samples, default.length, default.max_val_tokens) == stated == (4, 256, 20_000)
