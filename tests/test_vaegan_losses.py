"""aurl.model.vaegan's losses term by term: which targets the CE scores, the KL's free bits and per-token scale,
the reparameterized z, the GAN's signs, the fakes, word dropout's share, the warm-up boundary and BN-VAE's first
running statistics. Each test reads what the model computes (forward hooks, metrics), never a copy of it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from test_vaegan import batch, tiny

from aurl.model import MusicTransformerVAEGAN
from aurl.vocab import PAD_ID, VOCAB_SIZE


def _capture(module, pre: bool = False) -> list:
    """What a module receives (pre: its first argument) or returns, call by call."""
    seen = []
    if pre:
        module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    else:
        module.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))
    return seen


def test_the_training_loss_scores_exactly_the_targets_the_loss_mask_marks():
    """A window's state prefix (loss_mask False) and its PAD tail are never targets: the loss is the mean CE over
    the targets t with loss_mask[t] (not loss_mask[t - 1]), and metrics["tokens"] counts them. Measured difference
    to the recomputed mean: ~1e-7."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer")).eval()
    x, m = batch(b=2, t=20)
    m[:, :5] = False  # a 5-token state prefix
    x[1, 16:] = PAD_ID
    m[1, 16:] = False
    out = model(x, m, return_logits=True)
    scored = m[:, 1:] & (x[:, 1:] != PAD_ID)
    assert int(scored.sum()) == 15 + 11 == float(out.metrics["tokens"])
    ce = F.cross_entropy(out.logits.reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1), reduction="none")
    ref = ce[scored.reshape(-1)].mean()
    assert torch.allclose(out.loss, ref, atol=1e-5) and torch.allclose(out.metrics["recon"], ref, atol=1e-5)


def test_the_vae_loss_adds_beta_times_the_free_bits_kl_on_the_per_token_scale():
    """loss = recon + beta * sum_d max(KL_d, free_bits) * windows / targets (KL per window, CE per token). Half
    the latent dims can carry nats of KL (3 of them do, above free_bits), the rest ~1e-4 (charged free_bits), so
    both the clamp and the scale show. Eval mode: z = mu, deterministic. Measured relative difference ~4e-9."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae", kl_beta_max=0.3, free_bits=0.5)).eval()
    with torch.no_grad():
        model.to_mu.weight.normal_(std=2.0)
        model.to_mu.weight[4:] = 0.0
    x, m = batch(b=3, t=20)
    out = model(x, m, step=10)
    with torch.no_grad():
        mu, logvar = model.encode(x, x != PAD_ID)
    kl_dim = (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0)
    above = kl_dim > 0.5
    assert int(above.sum()) == 3 and not above[4:].any()  # both sides of the clamp are exercised
    kl_fb = torch.clamp(kl_dim, min=0.5).sum()
    assert float(out.metrics["kl"]) == pytest.approx(float(kl_dim.sum()), rel=1e-5)
    assert float(out.metrics["kl/free_bits_loss"]) == pytest.approx(float(kl_fb), rel=1e-5)
    for name, value in (("kl/dim_mean", kl_dim.mean()), ("kl/dim_min", kl_dim.min()), ("kl/dim_max", kl_dim.max())):
        assert float(out.metrics[name]) == pytest.approx(float(value), rel=1e-5, abs=1e-9), name
    assert float(out.metrics["kl/dim_max"]) > 1.0 > 1e-3 > float(out.metrics["kl/dim_min"])
    n_tok = float(out.metrics["tokens"])
    assert n_tok == 3 * 19
    expected = float(out.metrics["recon"]) + 0.3 * float(kl_fb) * 3 / n_tok
    assert float(out.loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_training_samples_z_with_the_posterior_std_and_evaluation_uses_mu():
    """z = mu + eps * exp(logvar / 2) in training, z = mu in evaluation. Here mu = 0 and logvar = log 4 for every
    window, so z is N(0, 2^2): the std of its 512 draws was measured 2.01 (the estimate's own std is ~3 %); we
    allow 10 %. exp(logvar) would give 4, z = mu 0."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae"))
    with torch.no_grad():
        for lin in (model.to_mu, model.to_logvar):
            lin.weight.zero_()
            lin.bias.zero_()
        model.to_logvar.bias.fill_(math.log(4.0))
    z_seen = _capture(model.latent_proj, pre=True)
    x, m = batch(b=64, t=16)
    model.train()(x, m)
    model.eval()(x, m)
    assert len(z_seen) == 2 and z_seen[0].shape == (64, 8)
    assert abs(float(z_seen[0].std()) / 2.0 - 1.0) < 0.1, float(z_seen[0].std())
    assert float(z_seen[0].mean().abs()) < 0.3
    assert not z_seen[1].any()


def test_the_gan_losses_have_the_non_saturating_signs():
    """D's logit says "real": D's phase minimizes softplus(-D(real)) + softplus(D(fake)), the generator's
    adversarial term is softplus(-D(fake)) (the non-saturating loss: G raises D's logit on its fakes); d/real and
    d/fake are D's P(real) = sigmoid(logit). The logits are read where D returns them (a forward hook)."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae_gan")).train()
    with torch.no_grad():
        model.disc.head.bias.fill_(0.7)  # logits well off 0, so a flipped sign cannot agree by accident
    d_out = _capture(model.disc)
    x, m = batch()
    d = model(x, m, step=10, phase="discriminator")
    d_loss = float(d.loss.detach())
    assert len(d_out) == 2  # real, then fake
    d_real, d_fake = d_out
    assert d_loss == pytest.approx(float(F.softplus(-d_real).mean() + F.softplus(d_fake).mean()), rel=1e-6)
    assert float(d.metrics["d/real"]) == pytest.approx(float(torch.sigmoid(d_real).mean()), rel=1e-6)
    assert float(d.metrics["d/fake"]) == pytest.approx(float(torch.sigmoid(d_fake).mean()), rel=1e-6)
    g = model(x, m, step=10)
    assert len(d_out) == 3
    assert float(g.metrics["g/adv"]) == pytest.approx(float(F.softplus(-d_out[2]).mean()), rel=1e-6)


def test_fakes_keep_the_real_first_token_and_the_real_tokens_where_nothing_is_scored():
    """The fakes are the real first token, then Gumbel samples where there is a target and the real tokens
    elsewhere (padding and the state prefix tell D nothing). Logits that put all their mass on one token that
    the windows never hold make the samples certain."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae_gan"))
    x, m = batch(b=2, t=12)
    x[x == 5] = 6
    tgt_mask = m[:, 1:].clone()
    tgt_mask[0, :3] = False
    tgt_mask[1, 8:] = False
    logits = torch.full((2, 11, VOCAB_SIZE), -1e4)
    logits[..., 5] = 0.0
    fake = model._fakes(logits, x, tgt_mask)
    assert fake.shape == (2, 12, VOCAB_SIZE) and torch.equal(fake.sum(-1), torch.ones(2, 12))
    ids = fake.argmax(-1)
    assert torch.equal(ids[:, 0], x[:, 0])
    kept = ~tgt_mask
    assert int(kept.sum()) == 6 and torch.equal(ids[:, 1:][kept], x[:, 1:][kept])
    assert int(tgt_mask.sum()) == 16 and (ids[:, 1:][tgt_mask] == 5).all()


def test_word_dropout_zeroes_the_share_of_decoder_inputs_it_names():
    """model.word_dropout = 0.25 zeroes about a quarter of the decoder's 504 input embeddings in training (the
    decoder's input read by a hook; latent_proj starts at zero, so a zeroed token's row is exactly 0): measured
    0.214; the binomial std is 0.019, we allow 0.08. None in evaluation."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae", word_dropout=0.25))
    seen = _capture(model.decoder, pre=True)
    x, m = batch(b=8, t=64)
    model.train()(x, m)
    model.eval()(x, m)
    assert len(seen) == 2 and seen[0].shape[:2] == (8, 63)
    share = float((seen[0] == 0).all(-1).float().mean())
    assert abs(share - 0.25) < 0.08, share
    assert not (seen[1] == 0).all(-1).any()


def test_the_adversarial_weight_is_full_at_the_start_step_without_a_warm_up():
    model = MusicTransformerVAEGAN(tiny("vae_gan", adv_weight_max=0.1, adv_start_step=50, adv_warmup_steps=0))
    assert [model.adv_weight(s) for s in (49, 50, 51)] == [0.0, 0.1, 0.1]


def test_bn_vae_running_statistics_start_at_the_first_batch():
    """BN-VAE: after one training batch, evaluation standardizes that batch's mu with its own statistics (the
    running ones start there, not at (0, 1), which a fresh encoder's spread of ~1e-4 would make meaningless):
    per dim, eval mu has mean ~0 (measured max 9e-8; we allow 1e-3) and biased variance gamma^2 * 15/16 = 0.234
    (measured within 5e-6; we allow 1e-2). With the running mean started at 0, they sat up to 0.68 off 0."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae", mu_bn_gamma=0.5))
    x, m = batch(b=16, t=16)
    model.train().encode(x, m)
    with torch.no_grad():
        mu, _ = model.eval().encode(x, m)
    assert mu.shape == (16, 8)
    assert float(mu.mean(0).abs().max()) < 1e-3
    assert float((mu.var(0, unbiased=False) - 0.25 * 15 / 16).abs().max()) < 1e-2


def test_latent_stats_agree_with_the_training_metrics_of_the_batch():
    """The histograms' figures (latent_stats) and the logged metrics of the same batch in eval mode: the KL per
    dim sums to metrics["kl"], and the dims whose batch variance of mu (biased, as _kl_term's) exceeds
    active_unit_threshold are metrics["kl/active_units"]. The threshold sits where the biased and unbiased
    estimates (ratio 3/2 at 3 windows) of three dims fall on either side of it."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae")).eval()
    with torch.no_grad():
        model.to_mu.weight.normal_(std=2.0)
    x, m = batch(b=3, t=20)
    stats = model.latent_stats(x, m)
    var = stats["mu_var_per_dim"]
    # 20 % above the second largest dim's biased variance, below its unbiased one (x 1.5): 1 active unit
    threshold = sorted(var.tolist())[6] * 1.2
    model.cfg.active_unit_threshold = threshold
    out = model(x, m)
    assert float(out.metrics["kl"]) == pytest.approx(float(stats["kl_per_dim"].sum()), rel=1e-5)
    assert float(out.metrics["kl/active_units"]) == int((var > threshold).sum()) == 1
    with torch.no_grad():
        mu, _ = model.encode(x, m)
    torch.testing.assert_close(var, mu.var(0, unbiased=False))


def test_activation_checkpointing_recomputes_the_encoder_and_the_decoder_blocks():
    """train.activation_checkpointing: in training, each decoder and encoder block runs again in the backward
    pass (its activations were not kept): two forward calls per block per step instead of one."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae")).train()
    calls = {"decoder": 0, "encoder": 0}
    for part in calls:
        # a pre-hook: the recomputation stops early once it has what backward needs (no forward hook fires)
        getattr(model, part).blocks[0].register_forward_pre_hook(
            lambda mod, args, part=part: calls.__setitem__(part, calls[part] + 1))
    x, m = batch()
    for on, expected in ((False, 1), (True, 2)):
        model.set_activation_checkpointing(on)
        calls.update(decoder=0, encoder=0)
        model(x, m).loss.backward()
        assert calls == {"decoder": expected, "encoder": expected}, (on, calls)


def test_word_dropout_spares_the_sounding_feature_and_the_transformer_mode():
    """Word dropout zeroes a token's embedding, not the sounding-notes feature added to it (state, not
    content): each decoder input row is either embedding + feature or the feature alone. And it is a vae
    setting: a transformer with model.word_dropout 0.5 trains on exactly what one with 0 does."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae", word_dropout=0.5, sounding_embedding=True)).train()
    with torch.no_grad():
        model.sound_proj.weight.normal_(std=0.5)
    seen = _capture(model.decoder, pre=True)
    x, m = batch(b=4, t=48)
    model(x, m)
    inp = x[:, :-1]
    with torch.no_grad():
        emb, feat = model.tok_emb(inp), model.sounding_feature(inp)
    rows = seen[0].reshape(-1, 32)
    kept = torch.isclose(rows, (emb + feat).reshape(-1, 32), atol=1e-6).all(-1)
    dropped = torch.isclose(rows, feat.reshape(-1, 32), atol=1e-6).all(-1)
    sounding = feat.reshape(-1, 32).abs().sum(-1) > 0
    assert bool((kept | dropped).all()) and rows.shape[0] == 4 * 47
    assert int((dropped & sounding).sum()) > 20  # measured 51 dropped tokens with notes sounding: feature kept

    twins = []
    for p in (0.0, 0.5):
        torch.manual_seed(0)
        twins.append(MusicTransformerVAEGAN(tiny("transformer", word_dropout=p)).train())
    torch.manual_seed(1)
    a = twins[0](x, m).loss.detach()
    torch.manual_seed(1)
    assert torch.equal(twins[1](x, m).loss.detach(), a)


def test_the_posterior_log_variance_is_clamped():
    """logvar is kept within [-12, 8]: an encoder far off (bias +-100 here) gives a finite KL and loss instead of
    exp(100) = inf."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae")).eval()
    x, m = batch()
    for bias, bound in ((100.0, 8.0), (-100.0, -12.0)):
        with torch.no_grad():
            model.to_logvar.bias.fill_(bias)
            _, logvar = model.encode(x, m)
        assert torch.equal(logvar, torch.full_like(logvar, bound))
        out = model(x, m)
        assert torch.isfinite(out.loss) and torch.isfinite(out.metrics["kl"])


@pytest.mark.parametrize("mode", ["transformer", "vae_gan"])
def test_activation_checkpointing_changes_no_loss_and_still_gives_logits_when_asked(mode):
    """train.activation_checkpointing is memory for time, nothing else: in training, the same seed gives the same
    loss with it as without (vae_gan: its fakes need the whole logits, so only the loss's own copies are chunked;
    measured difference 0.0 in both modes), and forward(return_logits=True) still returns the logits."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode)).train()
    x, m = batch()
    losses = []
    for on in (False, True):
        model.set_activation_checkpointing(on)
        torch.manual_seed(1)
        out = model(x, m, step=10)
        out.loss.backward()
        losses.append(out.loss.detach())
        assert out.logits is None
        torch.manual_seed(1)
        assert model(x, m, step=10, return_logits=True).logits.shape == (3, 23, VOCAB_SIZE), on
    assert torch.allclose(losses[1], losses[0], atol=1e-5), losses


def test_an_unknown_phase_is_refused_rather_than_trained_as_the_generator():
    model = MusicTransformerVAEGAN(tiny("transformer"))
    x, m = batch()
    with pytest.raises(ValueError, match="phase must be 'generator', 'discriminator' or 'validate', got 'gen'"):
        model(x, m, phase="gen")
