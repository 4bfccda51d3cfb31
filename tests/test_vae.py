"""The VAE-GAN is honest: PAD-invariant encoder and discriminator, validation on the negative ELBO (the
evaluation's number), latent figures computed as defined, the discriminator's accuracy logged."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from run_helpers import REPO, TINY, read_state

from aurl import vocab
from aurl.config import load_config, stage_config_path
from aurl.data.dataset import WindowDataset
from aurl.data.token_cache import TokenCache
from aurl.evaluate import EvalConfig, evaluate_model, format_report
from aurl.evaluate.likelihood import likelihood_figures
from aurl.model import ModelConfig, MusicTransformerVAEGAN, load_model_file
from aurl.model.elbo import figures

PAD = vocab.PAD_ID


def tiny(mode: str = "vae_gan", **kw) -> ModelConfig:
    base = dict(mode=mode, d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=128, dropout=0.0, latent_dim=8,
                encoder_layers=2, disc_d_model=32, disc_layers=2, disc_heads=2)
    return ModelConfig(**(base | kw))


def real_windows(n: int, length: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(PAD + 1, vocab.VOCAB_SIZE, (n, length), generator=g)


def padded(x: torch.Tensor, n_pad: int) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], n_pad), PAD)], dim=1)


# measured on this machine (this test's model and windows): max |diff| of mu, logvar and D's logit 0 with 5
# PADs, 1.1e-8 with 40; without the key-padding mask 0.012 (5 PADs) and 0.053 (40 PADs), |mu| ~ 0.017
PAD_TOLERANCE = 1e-6


def test_mu_and_discriminator_do_not_depend_on_trailing_pad():
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny()).eval()
    x = real_windows(3, 40)
    with torch.no_grad():
        outs = {}
        for n_pad in (0, 5, 40):
            ids = padded(x, n_pad)
            mu, logvar = model.encode(ids, ids != PAD)
            outs[n_pad] = (mu, logvar, model.disc(ids, ids != PAD))
        compared = 0
        for n_pad in (5, 40):
            for a, b in zip(outs[0], outs[n_pad], strict=True):
                assert (a - b).abs().max() <= PAD_TOLERANCE, (n_pad, (a - b).abs().max())
                compared += a.numel()
        assert compared == 2 * 3 * (8 + 8 + 1)
        # and not invariant because constant: another window gives another mu and D score
        other = real_windows(3, 40, seed=1)
        mu2, _ = model.encode(other, other != PAD)
        assert (mu2 - outs[0][0]).abs().max() > 100 * PAD_TOLERANCE
        assert (model.disc(other, other != PAD) - outs[0][2]).abs().max() > 100 * PAD_TOLERANCE


def test_the_encoder_and_the_discriminator_read_the_state_prefix_and_d_ignores_the_fakes_pad():
    """In the training phases the encoder and D read every real token of a window, the unscored state prefix
    included (loss_mask False there), and never PAD: z and D's logit on the real windows are the same whatever
    loss_mask says of the prefix; D's logit on the fakes of a window does not change with 5 PADs after it (the fakes copy the
    real tokens where nothing is scored, PAD too, and D masks PAD; measured 7e-9 and 1.1e-8). The
    decoder here writes token 5 whatever it reads (every embedding one vector, token 5's ten times longer),
    so the fakes are certain: no Gumbel noise differs between the padded and unpadded batches."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny()).eval()
    with torch.no_grad():
        v = torch.randn(32)
        model.tok_emb.weight.copy_(v.expand_as(model.tok_emb.weight))
        model.tok_emb.weight[5] = 10 * v
        torch.nn.init.normal_(model.latent_proj.weight, std=0.5)  # z reaches the decoder input, for the hook
    z_seen, d_seen = [], []
    model.latent_proj.register_forward_pre_hook(lambda m, args: z_seen.append(args[0].detach().clone()))
    model.disc.register_forward_hook(lambda m, args, out: d_seen.append(out.detach().clone()))
    x = real_windows(3, 30)
    scored = x != PAD
    prefix_unscored = scored.clone()
    prefix_unscored[:, :6] = False
    with torch.no_grad():
        model(x, scored)
        model(x, prefix_unscored)
        model(x, scored, phase="discriminator")
        model(x, prefix_unscored, phase="discriminator")
        model(padded(x, 5), padded(scored, 5) & (padded(x, 5) != PAD), phase="discriminator")
    assert len(z_seen) == 2 + 3 and len(d_seen) == 2 + 2 * 3  # generator phase: D on the fakes; D phase: real, fake
    assert torch.equal(z_seen[0], z_seen[1]) and z_seen[0].abs().max() > 0
    # (the fakes themselves follow loss_mask: sampled where a token is scored, copied where not)
    (d_real, d_fake), (p_real, _), (pad_real, pad_fake) = d_seen[2:4], d_seen[4:6], d_seen[6:8]
    assert torch.equal(d_real, p_real)
    assert (pad_real - d_real).abs().max() <= PAD_TOLERANCE and (pad_fake - d_fake).abs().max() <= PAD_TOLERANCE
    assert (d_fake - d_real).abs().max() > 100 * PAD_TOLERANCE  # the fakes are not the real windows


def test_bn_vae_mu_is_pad_invariant_and_batch_independent_in_eval():
    """mu_bn_gamma: in training the batch's means have variance gamma^2 per dim (no dim can collapse); in eval
    running statistics, so a window's mu depends neither on its PAD nor on the other windows of its batch."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae", mu_bn_gamma=0.5)).train()
    x = real_windows(6, 40)
    for _ in range(3):  # a few training batches fill the running statistics
        mu, _ = model.encode(x, x != PAD)
    var = mu.detach().var(0, unbiased=False)
    assert var.shape == (8,) and ((var - 0.25).abs() < 1e-3).all(), var
    model.eval()
    with torch.no_grad():
        alone = torch.cat([model.encode(x[i : i + 1], x[i : i + 1] != PAD)[0] for i in range(6)])
        together, _ = model.encode(padded(x, 40), padded(x, 40) != PAD)
    assert alone.shape == (6, 8) and (alone - together).abs().max() <= PAD_TOLERANCE


def test_discriminator_step_reports_accuracy_on_real_and_fake():
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny())
    ids = real_windows(4, 30)
    with torch.no_grad():
        torch.nn.init.constant_(model.disc.head.bias, 5.0)  # D says "real" to everything
    m = model(ids, ids != PAD, step=1, phase="discriminator").metrics
    assert float(m["d/acc_real"]) == 1.0 and float(m["d/acc_fake"]) == 0.0 and float(m["d/acc"]) == 0.5


def test_validation_discriminator_accuracy_is_on_the_decoders_fakes():
    """Validation's d/acc_fake scores D on the fakes (samples of the decoder's next-token distributions), not
    on the real windows again. D here says "real" exactly when most of a window is token R (its blocks add
    nothing: D = the final norm of the embeddings, +e for R and -e for any other token, mean-pooled, read
    along e); the windows are all R and the fresh decoder samples other tokens: D is right on all 4 real
    windows and all 4 fakes, which no constant D can be."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny()).eval()
    R = vocab.NOTE_ON_OFFSET + 40
    with torch.no_grad():
        for block in model.disc.stack.blocks:
            block.attn.o.weight.zero_()
            block.mlp.down.weight.zero_()
        e = torch.zeros(32)
        e[0] = 1.0
        model.disc.emb.weight.copy_(-e.expand_as(model.disc.emb.weight))
        model.disc.emb.weight[R] = e
        model.disc.head.weight.zero_()
        model.disc.head.weight[0, 0] = 1.0
        model.disc.head.bias.zero_()
        ids = torch.full((4, 30), R)
        sums = model(ids, ids != PAD, phase="validate").metrics
    assert float(sums["windows"]) == 4
    f = figures(sums, 0.01)
    assert f["d/acc_real"] == 1.0 and f["d/acc_fake"] == 1.0, f


@pytest.mark.parametrize("mode", ["vae", "vae_gan"])
def test_word_dropout_acts_in_training_of_both_vae_modes(mode):
    """model.word_dropout zeroes a share of the decoder's input embeddings in training, in vae and vae_gan
    alike: twins with the very same weights that differ only in it reconstruct differently in training (the
    same seed, so the same z), and exactly alike in eval."""
    twins = []
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        twins.append(MusicTransformerVAEGAN(tiny(mode, word_dropout=p)))
    twins[1].load_state_dict(twins[0].state_dict())
    ids = real_windows(3, 40)
    recon = {}
    for train in (True, False):
        for i, m in enumerate(twins):
            torch.manual_seed(1)
            with torch.no_grad():
                recon[train, i] = float(m.train(train)(ids, ids != PAD).metrics["recon"])
    assert recon[True, 0] != recon[True, 1] and recon[False, 0] == recon[False, 1], recon


@pytest.fixture(scope="module")
def vae_stage(tmp_path_factory):
    """A real tiny stage 3 (vae_gan, 2 epochs, every validation window scored) through python -m aurl.train."""
    out = tmp_path_factory.mktemp("vae") / "run"
    cmd = [sys.executable, "-m", "aurl.train", "--config", str(TINY), "--output-dir", str(out), "--stage", "3",
           "--from-scratch", "--tracker", "none", "stage3.train.max_steps=8", "stage3.train.max_val_batches=0",
           "stage3.eval.enabled=false", "stage3.checkpoint.every_steps=0"]
    env = dict(os.environ, WANDB_MODE="disabled")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, r


def test_best_val_loss_is_the_evaluations_negative_elbo(vae_stage):
    """best.pt is chosen on the negative ELBO: the state file's best_val_loss equals aurl.evaluate's bound
    of best.pt on the same validation windows (batched differently, in another process)."""
    out, _ = vae_stage
    cfg = load_config(stage_config_path(TINY, 3), {})
    entry = read_state(out)["stages"]["3"]
    model, mcfg, _ = load_model_file(out / "checkpoints" / "stage3" / "best.pt")
    assert mcfg.is_gan
    ds = WindowDataset(TokenCache.open(out / "cache"), "val", seq_len=cfg.data.seq_len, augment=None,
                       seed=cfg.train.seed)
    items = [ds[i] for i in range(len(ds))]
    batches = [(torch.stack([it["input_ids"] for it in items[b : b + 3]]).numpy(),
                torch.stack([it["loss_mask"] for it in items[b : b + 3]]).numpy()) for b in range(0, len(items), 3)]
    f = likelihood_figures(model, batches, cfg.train.seed, "cpu")
    assert f["windows"] == len(ds) >= 2
    # the KL term is in, and far larger than the tolerance below (selecting on recon would fail)
    assert f["kl"] > 100 * 1e-5 * f["nelbo"] and f["nelbo"] == pytest.approx(f["recon"] + f["kl"])
    # measured: equal to ~1e-7 relative (float32 forward at another batch width)
    assert entry["best_val_loss"] == pytest.approx(f["nelbo"], rel=1e-5)
    info = json.loads((out / "checkpoints" / "stage3" / "best.json").read_text())
    assert "nelbo" in json.dumps(info)


def test_validation_and_discriminator_figures_are_logged(vae_stage):
    out, r = vae_stage
    recs = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in recs if x["split"] == "val"]
    train = [x for x in recs if x["split"] == "train"]
    steps = read_state(out)["stages"]["3"]["step"]
    assert len(val) == 2 and len(train) == steps >= 4  # log_every_steps 1; a validation per epoch
    for rec in val:
        assert {"nelbo", "kl", "active_units", "zswap_gap", "d/acc_real", "d/acc_fake"} <= rec.keys(), rec
        assert rec["loss"] == rec["nelbo"] and 0 <= rec["d/acc_real"] <= 1
    assert all({"d/acc_real", "d/acc_fake"} <= x.keys() for x in train)
    assert "val nelbo" in r.stderr + r.stdout and "active units" in r.stderr + r.stdout
    assert np.isfinite([x["zswap_gap"] for x in val]).all()


def test_stage_end_evaluation_reports_the_latent_and_the_discriminator(vae_stage):
    out, _ = vae_stage
    model, _, _ = load_model_file(out / "checkpoints" / "stage3" / "best.pt")
    result = evaluate_model(model, TokenCache.open(out / "cache"), EvalConfig(num_samples=0, pictures=False))
    v = result["validation"]
    assert v["kind"] == "elbo_bound" and v["latent"]["latent_dim"] == 8 and 0 <= v["latent"]["active_units"] <= 8
    assert v["nll_per_token"] == pytest.approx(v["recon_per_token"] + v["kl_per_token"]) and v["kl_per_token"] > 0
    assert 0 <= v["discriminator"]["acc_real"] <= 1 and 0 <= v["discriminator"]["acc_fake"] <= 1
    text = format_report(result)
    assert "active units" in text and "z-swap gap" in text and "accuracy on real windows" in text
