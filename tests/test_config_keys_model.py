"""Probes of the model: the built MusicTransformerVAEGAN (parameter count, or its forward output / metrics / gradients with the very same weights).

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

import pytest
import torch
from config_probes import (
    keys_of,
    probe,
    rejects,
    run_probe,
)

from aurl import vocab
from aurl.config import build_config
from aurl.console import UserError
from aurl.model import MusicTransformerVAEGAN
from aurl.model.config import ModelConfig

SMALL = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64, latent_dim=8, encoder_layers=1,
             disc_d_model=16, disc_layers=1, disc_heads=2, dropout=0.0)


def build(**kw) -> MusicTransformerVAEGAN:
    torch.manual_seed(0)
    return MusicTransformerVAEGAN(ModelConfig(**{**SMALL, **kw}))


def twins(key: str, a, b, **kw) -> tuple[MusicTransformerVAEGAN, MusicTransformerVAEGAN]:
    """Two models that differ only in `key`, with the very same weights."""
    name = key.split(".")[1]
    ma, mb = build(**{**kw, name: a}), build(**{**kw, name: b})
    mb.load_state_dict(ma.state_dict())
    return ma, mb


def batch(n: int = 4, t: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab.VOCAB_SIZE, (n, t), generator=g)
    return ids, torch.ones(n, t, dtype=torch.bool)


def forward(model, step: int = 0, phase: str = "generator", seed: int = 0):
    torch.manual_seed(seed)
    ids, mask = batch()
    return model(ids, mask, step=step, phase=phase, return_logits=True)


def sizes_differ(key: str, a, b, **kw) -> None:
    name = key.split(".")[1]
    na, nb = build(**{**kw, name: a}).num_parameters(), build(**{**kw, name: b}).num_parameters()
    assert na != nb, f"{key}: {a} and {b} build models of the same size ({na})"


@probe("model.mode")
def _(lab, key):
    sizes = [build(mode=m).num_parameters() for m in ("transformer", "vae", "vae_gan")]
    assert sizes[0] < sizes[1] < sizes[2]
    assert "kl" in forward(build(mode="vae")).metrics and "kl" not in forward(build()).metrics
    rejects(key, "gan")


@probe("model.vocab_size")
def _(lab, key):
    """Fixed by the vocabulary: the embedding has vocab_size rows, and another value is refused."""
    assert build().tok_emb.num_embeddings == vocab.VOCAB_SIZE
    rejects(key, vocab.VOCAB_SIZE + 1)


@probe("model.d_model")
def _(lab, key):
    sizes_differ(key, 32, 64, n_heads=2)
    rejects(key, 0)


@probe("model.n_layers")
def _(lab, key):
    sizes_differ(key, 1, 2)
    assert len(build(n_layers=3).decoder.blocks) == 3
    rejects(key, 0)


@probe("model.d_ff")
def _(lab, key):
    sizes_differ(key, 64, 128)
    rejects(key, 0)


@probe("model.n_heads")
def _(lab, key):
    a, b = twins(key, 2, 4)
    assert a.num_parameters() == b.num_parameters()
    assert not torch.equal(forward(a.eval()).logits, forward(b.eval()).logits)
    rejects(key, 3)


@probe("model.max_seq_len")
def _(lab, key):
    """The context the model is given: the evaluation's validation windows, the generation KV cache."""
    from aurl.evaluate.config import EvalConfig
    from aurl.evaluate.likelihood import validation_nll

    a, b = twins(key, 64, 16)
    va = validation_nll(a, lab.cache, EvalConfig(num_samples=0), "cpu")
    vb = validation_nll(b, lab.cache, EvalConfig(num_samples=0), "cpu")
    assert vb["windows"] > 3 * va["windows"] and va["nll_per_token"] != vb["nll_per_token"]
    assert a.new_cache(1).max_len == 64 and b.new_cache(1).max_len == 16
    with pytest.raises(UserError, match=r"data\.seq_len"):  # windows longer than the model's context
        build_config({"model": {"max_seq_len": 32}, "data": {"seq_len": 64}})


@probe("model.dropout")
def _(lab, key):
    a, b = twins(key, 0.0, 0.5)
    assert not torch.equal(forward(a.train()).logits, forward(b.train()).logits)
    assert torch.equal(forward(a.eval()).logits, forward(b.eval()).logits)  # only while training
    rejects(key, 1.0)


@probe("model.rope_base")
def _(lab, key):
    a, b = twins(key, 10000.0, 100.0)
    assert not torch.equal(forward(a.eval()).logits, forward(b.eval()).logits)
    rejects(key, 1.0)


@probe("model.sounding_embedding")
def _(lab, key):
    """On: a Linear(88, d_model) of the pitches sounding after each token is added to its embedding (twins with
    the same weights differ once it is non-zero, and only where notes sound); off: no such weight."""
    off, on = build(), build(sounding_embedding=True)
    assert off.sound_proj is None and on.num_parameters() - off.num_parameters() == 88 * SMALL["d_model"]
    on.load_state_dict({**off.state_dict(), "sound_proj.weight": torch.randn(SMALL["d_model"], 88)})
    silent = torch.full((1, 12), vocab.TIME_SHIFT_OFFSET)  # no note sounds: the feature is zero there
    assert torch.equal(on.eval().decode(silent), off.eval().decode(silent))
    assert not torch.allclose(forward(on.eval()).logits, forward(off.eval()).logits)
    rejects(key, "yes")


@probe("model.sounding_output_bias")
def _(lab, key):
    """On: two learned scalars shift NOTE_ON of sounding and NOTE_OFF of silent pitches (twins with the same
    weights differ once they are non-zero, and only in the note-event logits); off: no such parameter."""
    off, on = build(), build(sounding_output_bias=True)
    assert off.sound_bias is None and on.num_parameters() - off.num_parameters() == 2
    on.load_state_dict({**off.state_dict(), "sound_bias": torch.tensor([-0.1, -0.2])})
    delta = forward(on.eval()).logits - forward(off.eval()).logits
    notes = slice(vocab.NOTE_ON_OFFSET, vocab.NOTE_OFF_OFFSET + vocab.NUM_PITCHES)
    assert delta[..., notes].abs().amax() > 1 and not delta[..., : notes.start].any()
    assert not delta[..., notes.stop:].any()
    rejects(key, "yes")


@probe("model.latent_dim")
def _(lab, key):
    sizes_differ(key, 8, 16, mode="vae")
    assert forward(build(mode="vae", latent_dim=16).eval()) is not None
    rejects(key, 0)


@probe("model.encoder_layers")
def _(lab, key):
    sizes_differ(key, 1, 2, mode="vae")
    rejects(key, 0, {"mode": "vae"})


def vae_metric(key: str, a, b, metric: str, step: int = 0, **kw) -> tuple[float, float]:
    ma, mb = twins(key, a, b, mode="vae", **kw)
    return float(forward(ma, step).metrics[metric]), float(forward(mb, step).metrics[metric])


@probe("model.kl_beta_max")
def _(lab, key):
    a, b = vae_metric(key, 0.2, 0.5, "kl/beta", step=10_000)
    assert (a, b) == (pytest.approx(0.2), pytest.approx(0.5))
    ma, mb = twins(key, 0.2, 0.5, mode="vae")
    assert float(forward(ma, 10_000).loss.detach()) != float(forward(mb, 10_000).loss.detach())
    rejects(key, -0.1)


@probe("model.kl_warmup_steps")
def _(lab, key):
    a, b = vae_metric(key, 100, 1000, "kl/beta", step=50, kl_beta_max=0.2)
    assert (a, b) == (pytest.approx(0.1), pytest.approx(0.01))
    rejects(key, -1)


@probe("model.free_bits")
def _(lab, key):
    a, b = vae_metric(key, 0.0, 5.0, "kl/free_bits_loss", latent_dim=8)
    assert b == pytest.approx(5.0 * 8) and a < b  # every dim below 5 nats is charged 5
    rejects(key, -1.0)


@probe("model.active_unit_threshold")
def _(lab, key):
    a, b = vae_metric(key, 0.0, 1e9, "kl/active_units", latent_dim=8)
    assert (a, b) == (8.0, 0.0)
    rejects(key, -1.0)


@probe("model.word_dropout")
def _(lab, key):
    """Zeroes decoder inputs in vae training only: twins differ in train mode, agree in eval mode."""
    ma, mb = twins(key, 0.0, 0.5, mode="vae")
    train = [float(forward(m.train()).metrics["recon"]) for m in (ma, mb)]
    evals = [float(forward(m.eval()).metrics["recon"]) for m in (ma, mb)]
    assert train[0] != train[1] and evals[0] == evals[1]
    rejects(key, 1.0)
    rejects(key, -0.1)


@probe("model.mu_bn_gamma")
def _(lab, key):
    """BN-VAE: the batch's posterior means get variance gamma^2 per dim (0 = off: whatever the encoder gives)."""
    ma, mb = build(mode="vae", latent_dim=8), build(mode="vae", latent_dim=8, mu_bn_gamma=0.5)
    assert mb.load_state_dict(ma.state_dict(), strict=False).missing_keys == ["mu_bn.running_mean",
                                                                              "mu_bn.running_var"]
    ids, mask = batch()
    var = [m.train().encode(ids, mask)[0].detach().var(0, unbiased=False) for m in (ma, mb)]
    assert ((var[1] - 0.25).abs() < 1e-3).all() and float(var[0].max()) < 0.01
    rejects(key, -0.1)


@probe("model.grammar_unlikelihood")
def _(lab, key):
    """Adds weight * -log(1 - P(forbidden next token)) to the loss: same weights, loss grows by exactly that."""
    ma, mb = twins(key, 0.0, 0.5)
    a, b = forward(ma.eval()), forward(mb.eval())
    assert "grammar/unlikelihood" not in a.metrics
    extra = float(b.loss - a.loss)
    assert extra > 0 and extra == pytest.approx(0.5 * float(b.metrics["grammar/unlikelihood"]), rel=1e-5)
    rejects(key, -0.1)


@probe("model.disc_d_model")
def _(lab, key):
    sizes_differ(key, 16, 32, mode="vae_gan")
    rejects(key, 0)


@probe("model.disc_layers")
def _(lab, key):
    sizes_differ(key, 1, 2, mode="vae_gan")
    rejects(key, 0)


@probe("model.disc_heads")
def _(lab, key):
    a, b = twins(key, 2, 4, mode="vae_gan", disc_d_model=32)
    assert a.num_parameters() == b.num_parameters()
    da = forward(a.eval(), phase="discriminator").metrics["d/real"]
    db = forward(b.eval(), phase="discriminator").metrics["d/real"]
    assert float(da) != float(db)
    rejects(key, 3, {"disc_d_model": 16})


def adv_weight(key: str, a, b, step: int, **kw) -> tuple[float, float]:
    ma, mb = twins(key, a, b, mode="vae_gan", **kw)
    return (float(forward(ma.eval(), step).metrics["g/adv_weight"]),
            float(forward(mb.eval(), step).metrics["g/adv_weight"]))


@probe("model.adv_weight_max")
def _(lab, key):
    assert adv_weight(key, 0.05, 0.5, 10_000, adv_start_step=0, adv_warmup_steps=10) == \
        (pytest.approx(0.05), pytest.approx(0.5))
    rejects(key, -0.1)


@probe("model.adv_start_step")
def _(lab, key):
    assert adv_weight(key, 0, 100, 50, adv_weight_max=0.1, adv_warmup_steps=0) == (pytest.approx(0.1), 0.0)
    rejects(key, -1)


@probe("model.adv_warmup_steps")
def _(lab, key):
    assert adv_weight(key, 100, 0, 50, adv_weight_max=0.1, adv_start_step=0) == \
        (pytest.approx(0.05), pytest.approx(0.1))
    rejects(key, -1)


@probe("model.gumbel_tau")
def _(lab, key):
    """Hard Gumbel samples are the same for any tau; the straight-through gradient to G is not."""
    grads = []
    for model in twins(key, 1.0, 0.1, mode="vae_gan", adv_weight_max=1.0, adv_warmup_steps=0):
        model.eval()
        out = forward(model, step=10, seed=1)
        model.zero_grad()
        out.loss.backward()
        grads.append(model.tok_emb.weight.grad.clone())
    assert not torch.equal(grads[0], grads[1])
    rejects(key, 0.0)


@pytest.mark.parametrize("key", keys_of("model"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
