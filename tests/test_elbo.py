"""aurl.model.elbo: the validation sums (a function of seed and window, not of batching or padding) and the
figures made of them (negative ELBO, KL, active units, z-swap gap, the discriminator's accuracy). (The
trainer's best value is the evaluation's negative ELBO: test_vae.py.)"""

from __future__ import annotations

import pytest
import torch
from test_vae import PAD, real_windows, tiny

from aurl.model import MusicTransformerVAEGAN
from aurl.model.elbo import figures, sum_shapes, window_generators


def test_validation_sums_do_not_depend_on_batching_or_padding():
    """The noise is a function of (seed, window): one batch of 4 or two padded batches of 2 give the same
    negative ELBO, KL and active units."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae")).eval()
    torch.nn.init.normal_(model.latent_proj.weight, std=0.5)  # make z matter
    lens = [30, 41, 25, 50]
    ws = [real_windows(1, n, seed=i)[0] for i, n in enumerate(lens)]

    def batch(items, width):
        ids = torch.full((len(items), width), PAD)
        for i, w in enumerate(items):
            ids[i, : len(w)] = w
        return ids

    def total(batches):
        sums = {k: torch.zeros(s, dtype=torch.float64) for k, s in sum_shapes(model.cfg).items()}
        for ids in batches:
            for k, v in model(ids, ids != PAD, phase="validate", seed=3).metrics.items():
                sums[k] += v
        return figures(sums, 0.01)

    one = total([batch(ws, 50)])
    split = total([batch(ws[:2], 64), batch(ws[2:], 90)])
    assert one["tokens"] == split["tokens"] == sum(n - 1 for n in lens)
    for key in ("nelbo", "recon", "kl"):
        assert split[key] == pytest.approx(one[key], rel=1e-6), key
    assert one["active_units"] == split["active_units"]
    assert total([batch(ws, 50)])["nelbo"] == one["nelbo"]  # deterministic: no global RNG draws
    # another seed, another posterior sample: the bound moves (the noise is used at all)
    sums = {k: v for k, v in model(batch(ws, 50), batch(ws, 50) != PAD, phase="validate", seed=4).metrics.items()}
    assert figures(sums, 0.01)["recon"] != one["recon"]


def test_latent_figures_on_a_constructed_case():
    """figures() from hand-made sums: 3 windows whose mu are known, KL and swap sums given."""
    mu = torch.tensor([[1.0, 0.0, 0.05, 2.0], [-1.0, 0.0, -0.05, 2.0], [0.0, 0.0, 0.0, 2.0]], dtype=torch.float64)
    # per-dim variance over windows: 2/3, 0, 1/600 (< 0.01), 0 -> exactly one active unit
    sums = {"ce": torch.tensor(30.0), "tokens": torch.tensor(20.0), "windows": torch.tensor(3.0),
            "kl": torch.tensor(2.0), "mu": mu.sum(0), "mu_sq": mu.pow(2).sum(0),
            "swap_delta": torch.tensor(4.0), "swap_tokens": torch.tensor(20.0),
            "d_real_correct": torch.tensor(2.0), "d_fake_correct": torch.tensor(1.0)}
    f = figures(sums, 0.01)
    assert f["recon"] == 1.5 and f["kl"] == 0.1 and f["nelbo"] == pytest.approx(1.6) and f["loss"] == f["nelbo"]
    assert f["active_units"] == 1 and f["latent_dim"] == 4
    assert f["zswap_gap"] == pytest.approx(0.2)
    assert f["d/acc_real"] == pytest.approx(2 / 3) and f["d/acc_fake"] == pytest.approx(1 / 3)
    assert figures(sums, 0.001)["active_units"] == 2  # 1/600 > 0.001


def test_zswap_gap_and_active_units_on_a_model():
    """A latent the decoder ignores: gap exactly 0. A decoder that reads z, on distinct windows: gap > 0, and
    the encoder's mu varies over windows (active units > 0). KL per token = the analytic KL / tokens."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae")).eval()
    ids = real_windows(6, 40)
    with torch.no_grad():
        ignored = figures(model(ids, ids != PAD, phase="validate").metrics, 0.01)
        assert ignored["zswap_gap"] == 0.0  # latent_proj starts at zero: z is a no-op
        torch.nn.init.normal_(model.latent_proj.weight, std=1.0)
        torch.nn.init.normal_(model.to_mu.weight, std=1.0)
        used = figures(model(ids, ids != PAD, phase="validate").metrics, 0.01)
        mu, logvar = model.encode(ids, ids != PAD)
    assert used["zswap_gap"] > 0.01
    assert used["active_units"] == int((mu.var(0, unbiased=False) > 0.01).sum()) > 0
    kl = float((0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar)).sum())
    assert used["kl"] == pytest.approx(kl / (6 * 39), rel=1e-6)
    gens = window_generators(ids, ids != PAD, 0)
    assert len({float(torch.randn(1, generator=g)) for g in gens}) == 6  # one stream per distinct window


def _teacher_forced(model, ids: torch.Tensor, real: torch.Tensor, seed: int):
    """(logits, logvar, the windows' generators after their eps draw): what validation_sums decodes from,
    recomputed by its definition, z = mu + sigma * eps with eps from each window's own generator."""
    gens = window_generators(ids, real, seed)
    eps = torch.stack([torch.randn(model.cfg.latent_dim, generator=g) for g in gens])
    mu, logvar = model.encode(ids, real)
    return model.decode(ids[:, :-1], mu + eps * (0.5 * logvar).exp()), logvar, gens


def test_validation_sums_are_their_definition():
    """vae_gan: ce is the cross-entropy given z = mu + sigma * eps (eps from the window's own generator), over
    the tokens the loss mask scores (a 10-token prompt is not); D counts a real window right when its output is
    > 0 and a fake one when < 0. The same modules in the same order: they agree exactly (measured), so ==.
    Mutations: z = mu + exp(logvar) * eps (variance for sigma) -> ce 599.599, not 599.555, fails; the loss mask
    ignored -> 117 tokens, not 90, fails; a fake counted right when D > 0 -> 3, not 0, fails."""
    import torch.nn.functional as F

    from aurl.model.elbo import validation_sums

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae_gan")).eval()
    for lin in (model.latent_proj, model.to_logvar):
        torch.nn.init.normal_(lin.weight, std=0.5)  # z matters, and sigma is far from 1
    ids = real_windows(3, 40)
    real = ids != PAD
    mask = real.clone()
    mask[:, :10] = False
    with torch.no_grad():
        got = validation_sums(model, ids, mask, seed=5)
        logits, logvar, _ = _teacher_forced(model, ids, real, 5)
        assert float((0.5 * logvar).exp().min()) < 0.8 or float((0.5 * logvar).exp().max()) > 1.25
        ce = F.cross_entropy(logits.float().transpose(1, 2), ids[:, 1:], reduction="none")[:, 9:]
        assert float(got["tokens"]) == ce.numel() == 3 * 30
        assert float(got["ce"]) == float(ce.sum())
        torch.nn.init.zeros_(model.disc.head.weight)
        for bias, real_right, fake_right in ((10.0, 3, 0), (-10.0, 0, 3)):  # D says "real" / "fake" to all
            torch.nn.init.constant_(model.disc.head.bias, bias)
            d = validation_sums(model, ids, mask, seed=5)
            assert (float(d["d_real_correct"]), float(d["d_fake_correct"])) == (real_right, fake_right), bias


def test_the_fake_the_discriminator_judges_is_a_sample_of_the_model_not_the_real_window():
    """vae_gan: validation's fake window is the real one's first token, then at each scored position the
    Gumbel-max sample of the teacher-forced logits (the window's own generator, after its eps draw) and the
    real token elsewhere. Recomputed here and compared token for token (3 windows x 40), with the number of
    scored positions where the fake differs from the real window stated (an untrained model: nearly all).
    Mutation: fake = input_ids (D judges the real window twice) -> 0 differing positions, fails."""
    from aurl.model.elbo import validation_sums

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae_gan")).eval()
    ids = real_windows(3, 40)
    real = ids != PAD
    mask = real.clone()
    mask[:, :10] = False  # a prompt the loss does not score: the fake keeps it
    judged = []
    hook = model.disc.register_forward_hook(lambda module, args, out: judged.append(args[0].clone()))
    with torch.no_grad():
        validation_sums(model, ids, mask, seed=5)
        hook.remove()
        logits, _, gens = _teacher_forced(model, ids, real, 5)
        u = torch.stack([torch.rand(tuple(logits.shape[1:]), generator=g) for g in gens])
    sampled = (logits.float() - torch.log(-torch.log(u.clamp_min(1e-20)))).argmax(-1)
    scored = mask[:, 1:]
    expected = torch.cat([ids[:, :1], torch.where(scored, sampled, ids[:, 1:])], dim=1)
    assert len(judged) == 2 and torch.equal(judged[0], ids)  # the real window, then the fake
    fake = judged[1]
    assert fake.shape == expected.shape == (3, 40) and torch.equal(fake, expected)
    assert torch.equal(fake[:, :10], ids[:, :10])  # the unscored prompt is the real one
    differing = int((fake != ids).sum())
    assert 80 <= differing <= int(scored.sum()) == 90, differing  # measured: 90 (all)
