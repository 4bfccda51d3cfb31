"""Stage-to-stage transfer: same function where the architecture allows it, and a full report."""

from __future__ import annotations

import torch

from aurl.model import ModelConfig, MusicTransformerVAEGAN
from aurl.model.transfer import transfer_weights
from aurl.vocab import START_ID, VOCAB_SIZE


def cfg(mode="transformer", **kw) -> ModelConfig:
    base = dict(mode=mode, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, dropout=0.0,
                latent_dim=8, encoder_layers=1, disc_d_model=32, disc_layers=1, disc_heads=2)
    base.update(kw)
    return ModelConfig(**base)


def trained(c: ModelConfig, seed=0) -> MusicTransformerVAEGAN:
    """A model whose weights are all non-trivial (random, latent_proj included)."""
    torch.manual_seed(seed)
    m = MusicTransformerVAEGAN(c).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def tokens(b=2, t=20):
    x = torch.randint(4, VOCAB_SIZE, (b, t), generator=torch.Generator().manual_seed(1))
    x[:, 0] = START_ID
    return x


def move(src, dst_cfg, seed=1):
    torch.manual_seed(seed)
    dst = MusicTransformerVAEGAN(dst_cfg).eval()
    return dst, transfer_weights(src.state_dict(), src.cfg, dst)


def test_same_architecture_is_an_exact_copy():
    src = trained(cfg("vae_gan"))
    dst, rep = move(src, cfg("vae_gan"))
    assert rep.exact and not rep.grown and not rep.fresh and not rep.dropped
    assert len(rep.transferred) == len(src.state_dict())
    x = tokens()
    assert torch.equal(dst(x, x > 0).loss, src(x, x > 0).loss)


def test_transformer_to_vae_keeps_the_decoder_function():
    src = trained(cfg("transformer"))
    dst, rep = move(src, cfg("vae"))
    x = tokens()
    z = torch.randn(2, 8)
    assert torch.allclose(dst.decode(x, z), src.decode(x), atol=1e-6)  # z starts as a no-op
    assert all(n.startswith(("encoder.", "to_mu", "to_logvar", "latent_proj")) for n in rep.fresh)
    assert any(n.startswith("encoder.") for n in rep.fresh)
    assert set(rep.transferred) == set(src.state_dict()) and not rep.dropped


def test_vae_to_vae_gan_keeps_generator_and_adds_fresh_discriminator():
    src = trained(cfg("vae"))
    dst, rep = move(src, cfg("vae_gan"))
    x = tokens()
    out_s = src(x, x > 0, return_logits=True)
    out_d = dst(x, x > 0, return_logits=True)
    assert torch.allclose(out_d.logits, out_s.logits, atol=1e-6)
    assert torch.allclose(out_d.metrics["kl"], out_s.metrics["kl"])
    assert rep.fresh and all(n.startswith("disc.") for n in rep.fresh)


def test_going_back_reports_what_is_dropped():
    src = trained(cfg("vae_gan"))
    _, rep = move(src, cfg("transformer"))
    assert any(n.startswith("disc.") for n in rep.dropped)
    assert any(n.startswith("encoder.") for n in rep.dropped)
    assert "dropped" in rep.summary()


def test_growing_deeper_and_wider_preserves_the_function():
    src = trained(cfg("vae"))
    big = cfg("vae", d_model=64, n_heads=4, n_layers=4, d_ff=128, encoder_layers=2, latent_dim=12)
    dst, rep = move(src, big)
    assert rep.exact and rep.grown
    assert "decoder.blocks.3.attn.o.weight" in rep.grown
    x = tokens()
    mu_s, _ = src.encode(x, x > 0)
    mu_d, _ = dst.encode(x, x > 0)
    # equal up to RMSNorm's eps (1e-6 added to a mean square over a wider row)
    assert torch.allclose(mu_d[:, :8], mu_s, rtol=1e-3, atol=1e-3)
    z = torch.cat([mu_s, torch.randn(2, 4)], 1)  # new latent dims are ignored at first
    assert torch.allclose(dst.decode(x, z), src.decode(x, mu_s), rtol=1e-3, atol=1e-3)
    assert not torch.allclose(dst.decode(x, z), src.decode(x, mu_s + 0.5), rtol=1e-3, atol=1e-3)
    # and the grown model still learns through its new parts
    dst.train()
    dst(x, x > 0).loss.backward()
    assert dst.decoder.blocks[3].attn.o.weight.grad.abs().sum() > 0
    assert dst.tok_emb.weight.grad[:, 32:].abs().sum() > 0


def test_head_size_change_is_reported_as_inexact():
    src = trained(cfg("transformer"))
    dst, rep = move(src, cfg("transformer", n_heads=4))
    assert not rep.exact and any("head size" in n for n in rep.notes)
    assert set(rep.transferred) | set(rep.grown) == set(dst.state_dict())


def test_sounding_embedding_is_carried_added_as_a_no_op_grown_and_reported_when_dropped():
    """model.sounding_embedding: its weight moves with the rest (same function); a model without it transfers
    into one with it unchanged (zero at first); widening keeps the function (new rows zero); turning it off
    lists it as dropped and the transfer as inexact."""
    x = tokens()
    src = trained(cfg("transformer", sounding_embedding=True))
    assert src.sound_proj.weight.abs().sum() > 0
    dst, rep = move(src, cfg("vae", sounding_embedding=True))
    assert "sound_proj.weight" in rep.transferred and torch.equal(dst.sound_proj.weight, src.sound_proj.weight)
    assert torch.allclose(dst.decode(x, torch.randn(2, 8)), src.decode(x), atol=1e-6)
    plain = trained(cfg("transformer"))
    dst, rep = move(plain, cfg("transformer", sounding_embedding=True))
    assert rep.exact and "sound_proj.weight" in rep.fresh and torch.equal(dst.decode(x), plain.decode(x))
    dst, rep = move(src, cfg("transformer", sounding_embedding=True, d_model=64, n_heads=4, d_ff=128))
    assert rep.exact and "sound_proj.weight" in rep.grown and not dst.sound_proj.weight[32:].any()
    assert torch.allclose(dst.decode(x), src.decode(x), rtol=1e-3, atol=1e-3)  # RMSNorm eps, as above
    _, rep = move(src, cfg("transformer"))
    assert "sound_proj.weight" in rep.dropped and not rep.exact


def test_shrinking_is_inexact_and_another_vocabulary_or_rank_is_refused():
    """Fewer layers or a narrower layer cannot keep the function: the report says inexact (and names the
    dropped block, or the shrunk tensor). Another vocabulary, or a tensor of another rank, is refused.
    Mutations: the layer-count check dropped -> the 3 -> 2 layer transfer reads exact, fails; a shrunk
    tensor left exact -> the d_ff transfer reads exact, fails; the vocab_size check dropped -> no refusal (the
    embedding is cut), fails; the rank check dropped -> zip's error instead of the named one, fails."""
    import dataclasses

    import pytest

    deep = trained(cfg("transformer", n_layers=3))
    _, rep = move(deep, cfg("transformer"))
    assert not rep.exact and any(n.startswith("decoder.blocks.2.") for n in rep.dropped) and not rep.grown
    src = trained(cfg("transformer"))
    _, rep = move(src, cfg("transformer", d_ff=32))
    assert not rep.exact and any(": shrunk " in n for n in rep.notes)
    assert rep.grown
    dst = MusicTransformerVAEGAN(cfg("transformer")).eval()
    other = dataclasses.replace(src.cfg, vocab_size=VOCAB_SIZE + 8)
    with pytest.raises(ValueError, match=f"vocab_size differs: source {VOCAB_SIZE + 8}, destination {VOCAB_SIZE}"):
        transfer_weights(src.state_dict(), other, dst)
    state = {**src.state_dict(), "tok_emb.weight": src.state_dict()["tok_emb.weight"][:, 0]}
    with pytest.raises(ValueError, match=r"tok_emb.weight: cannot grow a \(\d+,\) tensor into \(\d+, 32\)"):
        transfer_weights(state, src.cfg, dst)
