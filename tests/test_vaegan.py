"""aurl.model.vaegan (MusicTransformerVAEGAN): causality, latent-only dependence, adversarial gradient, KV
cache, tiny overfit, the sounding-notes input. Its helpers (tiny, batch, _real_windows, _walker_sounding)
serve the other model tests too."""

from __future__ import annotations

import pytest
import torch

from aurl.console import UserError
from aurl.model import ModelConfig, MusicTransformerVAEGAN
from aurl.model.sampling import generate, make_generator
from aurl.vocab import END_ID, PAD_ID, START_ID, UNK_ID, VOCAB_SIZE

MODES = ["transformer", "vae", "vae_gan"]


def tiny(mode: str, **kw) -> ModelConfig:
    base = dict(mode=mode, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, dropout=0.0,
                latent_dim=8, encoder_layers=1, disc_d_model=32, disc_layers=1, disc_heads=2,
                kl_warmup_steps=0, adv_warmup_steps=0, adv_weight_max=1.0)
    base.update(kw)
    return ModelConfig(**base)


def batch(b=3, t=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, VOCAB_SIZE, (b, t), generator=g)
    x[:, 0] = START_ID
    return x, torch.ones_like(x, dtype=torch.bool)


@pytest.mark.parametrize("mode", MODES)
def test_forward_shapes_and_metric_names(mode):
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode))
    x, m = batch()
    out = model(x, m, step=5, return_logits=True)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (3, 23, VOCAB_SIZE)
    expected = {"transformer": {"recon"}, "vae": {"recon", "kl", "kl/active_units", "kl/beta"},
                "vae_gan": {"recon", "kl", "kl/active_units", "g/adv", "g/adv_weight"}}[mode]
    assert expected <= set(out.metrics)
    assert all(v.dim() == 0 for v in out.metrics.values())
    if mode == "vae_gan":
        d = model(x, m, step=5, phase="discriminator")
        assert {"d/real", "d/fake", "d/loss"} <= set(d.metrics)
    else:
        with pytest.raises(ValueError, match="vae_gan"):
            model(x, m, phase="discriminator")


def test_loss_is_shifted_and_pad_masked():
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer"))
    x, m = batch(b=2, t=16)
    out = model(x, m, return_logits=True)
    ref = torch.nn.functional.cross_entropy(out.logits.reshape(-1, VOCAB_SIZE), x[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, ref, atol=1e-5)
    # padding the tail changes nothing about the loss on the real tokens
    xp = torch.cat([x, torch.full((2, 5), PAD_ID)], 1)
    mp = torch.cat([m, torch.zeros(2, 5, dtype=torch.bool)], 1)
    assert torch.allclose(model(xp, mp).loss, ref, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_decoder_is_causal(mode):
    """Changing token t+1 leaves the logits at positions <= t unchanged (z held fixed in vae modes)."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode)).eval()
    x, _ = batch(b=2, t=20)
    z = torch.randn(2, 8) if model.cfg.is_vae else None
    if z is not None:
        torch.nn.init.normal_(model.latent_proj.weight, std=0.5)  # make z matter
    base = model.decode(x, z)
    for t in (0, 7, 18):
        y = x.clone()
        y[:, t + 1] = (y[:, t + 1] + 17) % (VOCAB_SIZE - 4) + 4
        out = model.decode(y, z)
        assert torch.allclose(out[:, : t + 1], base[:, : t + 1], atol=1e-6)
        assert not torch.allclose(out[:, t + 1], base[:, t + 1])


@pytest.mark.parametrize("mode", ["vae", "vae_gan"])
def test_vae_prediction_depends_on_targets_only_through_z(mode):
    """Loss-path logits at t: same when the targets >= t+1 change but z is the same; differ when z differs."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode)).eval()
    torch.nn.init.normal_(model.latent_proj.weight, std=0.5)
    x, m = batch(b=2, t=20)
    y = x.clone()
    y[:, 11:] = torch.randint(4, VOCAB_SIZE, (2, 9))
    mu_x, _ = model.encode(x, m)
    mu_y, _ = model.encode(y, m)
    assert not torch.allclose(mu_x, mu_y)  # the encoder does read the targets...
    out_x = model(x, m, return_logits=True).logits  # eval: z = mu
    # ...but with z fixed, positions < 11 of the decoder are blind to them
    assert torch.allclose(model.decode(y[:, :-1], mu_x)[:, :10], out_x[:, :10], atol=1e-6)
    assert not torch.allclose(model.decode(x[:, :-1], mu_y)[:, :10], out_x[:, :10])


def test_generator_gets_adversarial_gradient_and_params_disjoint():
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae_gan"))
    g_ids = {id(p) for p in model.generator_parameters()}
    d_ids = {id(p) for p in model.discriminator_parameters()}
    assert g_ids and d_ids and not g_ids & d_ids
    assert g_ids | d_ids == {id(p) for p in model.parameters()}
    x, m = batch()
    # the adversarial term alone:
    logits = model.decode(x[:, :-1], model.encode(x, m)[0])
    fake = model._fakes(logits, x, m[:, 1:])
    g_adv = torch.nn.functional.softplus(-model.disc(fake, m)).mean()
    g_adv.backward()
    assert model.tok_emb.weight.grad is not None and model.tok_emb.weight.grad.abs().sum() > 0
    assert model.decoder.blocks[0].attn.q.weight.grad.abs().sum() > 0
    # the generator phase's loss leaves D's grads untouched; the D phase leaves G's untouched
    model.zero_grad(set_to_none=True)
    model(x, m, step=10).loss.backward()
    assert all(p.grad is None for p in model.discriminator_parameters())
    assert model.decoder.blocks[0].mlp.up.weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    model(x, m, step=10, phase="discriminator").loss.backward()
    assert all(p.grad is None for p in model.generator_parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.discriminator_parameters())


def test_warmups():
    model = MusicTransformerVAEGAN(tiny("vae_gan", kl_beta_max=0.4, kl_warmup_steps=100, adv_weight_max=0.1,
                                        adv_start_step=50, adv_warmup_steps=50))
    assert model.kl_beta(0) == 0 and model.kl_beta(50) == pytest.approx(0.2) and model.kl_beta(500) == 0.4
    assert model.adv_weight(49) == 0 and model.adv_weight(75) == pytest.approx(0.05) and model.adv_weight(999) == 0.1


@pytest.mark.parametrize("mode", MODES)
def test_tiny_model_overfits_one_batch(mode):
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode, kl_beta_max=0.01, adv_weight_max=0.01))
    x, m = batch(b=4, t=24)
    opt_g = torch.optim.Adam(model.generator_parameters(), lr=1e-2)
    opt_d = torch.optim.Adam(model.discriminator_parameters(), lr=1e-3) if mode == "vae_gan" else None
    first = None
    for step in range(60):
        out = model(x, m, step=step)
        opt_g.zero_grad()
        out.loss.backward()
        opt_g.step()
        first = first if first is not None else out.metrics["recon"].item()
        if opt_d is not None:
            d = model(x, m, step=step, phase="discriminator")
            opt_d.zero_grad()
            d.loss.backward()
            opt_d.step()
    assert out.metrics["recon"].item() < 0.25 * first, (first, out.metrics["recon"].item())


@pytest.mark.parametrize("mode", ["transformer", "vae"])
def test_kv_cache_equals_full_recompute(mode):
    """Same tokens, token for token, with and without the cache; also across a context restart."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode, max_seq_len=32))
    prompt = torch.full((2, 1), START_ID)
    kw = dict(temperature=1.0, top_k=40, top_p=0.95)
    a = generate(model, prompt, 80, generator=make_generator(3), use_cache=True, **kw)
    b = generate(model, prompt, 80, generator=make_generator(3), use_cache=False, **kw)
    assert torch.equal(a, b)
    c = generate(model, prompt, 80, generator=make_generator(3), use_cache=True, **kw)
    assert torch.equal(a, c)  # same seed, same tokens
    assert not ({PAD_ID, START_ID, UNK_ID, END_ID} & set(a[:, 1:].flatten().tolist()))
    # cached logits equal the full pass
    x, _ = batch(b=2, t=20)
    z = torch.randn(2, 8) if mode == "vae" else None
    cache = model.new_cache(2)
    parts = [model.decode(x[:, :7], z, cache)] + [model.decode(x[:, i : i + 1], z, cache) for i in range(7, 20)]
    assert torch.allclose(torch.cat(parts, 1), model.decode(x, z), atol=1e-5)


@pytest.mark.parametrize("field,value", [("mode", "gan"), ("n_heads", 3), ("dropout", 1.5), ("vocab_size", 10),
                                         ("n_heads", 32), ("disc_heads", 32), ("sounding_embedding", "yes")],
                         ids=["mode", "n_heads-split", "dropout", "vocab_size", "n_heads-odd-head-size",
                              "disc_heads-odd-head-size", "sounding_embedding-not-bool"])
def test_bad_config_names_the_field(field, value):
    """A model file's config is checked by ModelConfig.validate alone (a YAML's also by aurl.config): RoPE needs
    heads of even size (32 / 32 = 1), in the discriminator too; a flag must be a bool."""
    with pytest.raises(UserError, match=f"model.{field}"):
        cfg = tiny("transformer")
        setattr(cfg, field, value)
        MusicTransformerVAEGAN(cfg)


def test_encoder_layers_zero_is_refused_in_vae_modes_only():
    assert tiny("transformer", encoder_layers=0).validate().encoder_layers == 0
    for mode in ("vae", "vae_gan"):
        with pytest.raises(UserError, match="model.encoder_layers = 0: must be >= 1 in vae modes"):
            tiny(mode, encoder_layers=0).validate()


@pytest.mark.parametrize("mode", MODES)
def test_bf16_autocast_runs(mode):
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode))
    x, m = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, m, step=3)
        if mode == "vae_gan":
            out_d = model(x, m, step=3, phase="discriminator")
            assert torch.isfinite(out_d.loss)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32


def test_ddp_wrapping_both_phases(tmp_path):
    """One forward signature: plain torch DDP (gloo, world size 1) wraps every mode; vae_gan's phases each
    leave the other network's parameters unused, hence find_unused_parameters=True."""
    import gc

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        for mode in MODES:
            torch.manual_seed(0)
            model = DDP(MusicTransformerVAEGAN(tiny(mode)), find_unused_parameters=mode == "vae_gan")
            x, m = batch()
            model(x, m, step=1).loss.backward()
            if mode == "vae_gan":
                model(x, m, step=1, phase="discriminator").loss.backward()
            assert model.module.tok_emb.weight.grad is not None
            # Drain gloo's work queue, then free DDP's reducer while the group is alive. Freed later (with the
            # GIL held) while a worker thread still ran a gradient hook that needs the GIL, the group's
            # destructor waited forever for that thread (seen once: the whole suite hung).
            dist.barrier()
            del model
            gc.collect()
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_kv_cache_equals_recompute_on_gpu():
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae", max_seq_len=48)).cuda()
    prompt = torch.full((2, 1), START_ID)
    a = generate(model, prompt, 100, generator=make_generator(1, "cuda"), use_cache=True, top_k=40)
    b = generate(model, prompt, 100, generator=make_generator(1, "cuda"), use_cache=False, top_k=40)
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# model.sounding_embedding: the pitches sounding after each token, given to the model exactly
def _walker_sounding(tokens: list[int]) -> torch.Tensor:
    """Reference: aurl.grammar's Walker fed token by token with the instrument tokens blanked (PAD: the feature
    ignores instruments, every note in one scope); [T, 88] bool of the pitches in its ``state.sounding``."""
    from aurl.grammar import Walker
    from aurl.vocab import MIN_PITCH, NUM_PITCHES, family_of_token

    walker, rows = Walker(), []
    for t in tokens:
        walker.feed(PAD_ID if family_of_token(t) >= 0 else t)
        row = torch.zeros(NUM_PITCHES, dtype=torch.bool)
        row[[p - MIN_PITCH for _, p in walker.state.sounding]] = True
        rows.append(row)
    return torch.stack(rows)


def _real_windows(n_pieces: int = 3, per_piece: int = 4, length: int = 96) -> torch.Tensor:
    """Training windows as the loader cuts them (aurl.data.dataset: the state prefix, then the piece's own
    tokens) from grammatical pieces with overlapping voices, PAD-padded to one length."""
    import numpy as np
    from midi_factory import random_score

    from aurl import codec, grammar

    rows = []
    for seed in range(n_pieces):
        piece = codec.encode(random_score(seed, n_notes=120, n_programs=2)).astype(np.int64)
        states = grammar.PieceStates(piece)
        for start in np.linspace(0, len(piece) - length // 2, per_piece).astype(int).tolist():
            prefix = grammar.state_prefix(states.state(start)) if start else np.zeros(0, dtype=np.int64)
            toks = np.concatenate([prefix, piece[start:]])[:length].astype(np.int64)
            rows.append(np.pad(toks, (0, length - len(toks)), constant_values=PAD_ID))
    return torch.from_numpy(np.stack(rows))


def test_sounding_embedding_is_added_to_the_token_embedding_and_honoured():
    """model.sounding_embedding on: each position's input is tok_emb + W @ (walker's multi-hot); off (the
    default, and a model file without the key): no such weight, the embedding alone."""
    from aurl.model.sounding import sounding_states

    torch.manual_seed(0)
    on = MusicTransformerVAEGAN(tiny("vae", sounding_embedding=True)).eval()
    off = MusicTransformerVAEGAN(tiny("vae")).eval()
    assert off.sound_proj is None and ModelConfig().sounding_embedding is False
    assert on.num_parameters() - off.num_parameters() == 88 * 32
    assert not on.sound_proj.weight.any()  # zero at first: a model without it transfers in unchanged
    with torch.no_grad():
        on.sound_proj.weight.normal_(0, 0.5)
    ids = _real_windows(n_pieces=1, per_piece=2)
    ref = torch.stack([_walker_sounding(row) for row in ids.tolist()]).float() @ on.sound_proj.weight.T
    feature = on.sounding_feature(ids)
    assert feature.shape == (2, 96, 32) and feature.abs().sum() > 0
    assert torch.allclose(feature, ref, atol=1e-6)
    assert torch.allclose(on.embed(ids), on.tok_emb(ids) + ref, atol=1e-6)  # what the encoder reads
    z = torch.randn(2, 8)
    assert not torch.allclose(on.decode(ids, z), off.decode(ids, z), atol=1e-3)
    assert torch.equal(sounding_states(ids).float() @ on.sound_proj.weight.T, feature)


SOUNDING_KEYS = {"input": {"sounding_embedding": True}, "output_bias": {"sounding_output_bias": True},
                 "both": {"sounding_embedding": True, "sounding_output_bias": True}}


@pytest.mark.parametrize("keys", SOUNDING_KEYS)
@pytest.mark.parametrize("mode", ["transformer", "vae"])
def test_sounding_embedding_incremental_equals_full_forward_and_cached_generation_equals_uncached(mode, keys):
    """With the feature on (and a non-zero projection), the output bias on (non-zero) or both: the KV-cached
    decode, chunk then token by token, gives the full forward's logits (the cache carries the sounding state);
    generation gives the same tokens with and without the cache, raw and grammar-constrained, across context
    restarts with notes sounding before the window (the state is handed over), and a context restart keeps
    the notes sounding in the feature."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny(mode, max_seq_len=32, **SOUNDING_KEYS[keys])).eval()
    with torch.no_grad():
        if model.sound_proj is not None:
            model.sound_proj.weight.normal_(0, 0.5)
        if model.sound_bias is not None:
            model.sound_bias.copy_(torch.tensor([-0.05, -0.1]))  # -1.6 / -3.2 nats (GAIN 32)
        model.tok_emb.weight.mul_(4)  # peaked distributions: a token then depends on what the model was fed
    x = _real_windows(n_pieces=1, per_piece=2, length=30)
    z = torch.randn(2, 8) if mode == "vae" else None
    cache = model.new_cache(2)
    parts = [model.decode(x[:, :7], z, cache)] + [model.decode(x[:, i : i + 1], z, cache) for i in range(7, 30)]
    # float32 on CPU: the two paths differ by ~1e-6 (other matmul shapes); 1e-5 as in the cache test above
    assert torch.allclose(torch.cat(parts, 1), model.decode(x, z), atol=1e-5)
    decode, calls = model.decode, []

    def spy(ids, z=None, cache=None, **kw):  # the state each call is handed, to check against the rows
        calls.append((ids.shape[1], kw.get("sounding")))
        return decode(ids, z, cache, **kw)

    model.decode = spy
    compared = handed = 0
    for grammar in (False, True):
        rows = []
        for use_cache in (True, False):
            calls.clear()
            rows.append(generate(model, x[:, :20], 100, generator=make_generator(4), grammar=grammar,
                                 use_cache=use_cache, z=z, temperature=1.0))
            assert len(calls) == 101  # one call per step: call k sees the row's first 20 + k tokens
            for k, (length, before) in enumerate(calls):
                if use_cache and length == 1:
                    continue  # the cache carries the state on
                win = 20 + k - length  # a (re)start of the context at token `win`
                ref = torch.stack([_walker_sounding(r)[win - 1] if win else torch.zeros(88, dtype=torch.bool)
                                   for r in rows[-1].tolist()])
                assert torch.equal(before, ref)
                handed += int(ref.any())
        assert torch.equal(rows[0], rows[1])
        compared += rows[0].numel()
    assert compared == 2 * 2 * 120 and handed > 0
    # a window cut after notes started: the state handed over gives the full pass's feature
    from aurl.model.sampling import _sounding

    full = model.sounding_after(x)
    win = model.sounding_after(x[:, 12:], sounding=_sounding(x[:, :12]))
    assert _sounding(x[:, :12]).any() and torch.equal(win, full[:, 12:])
    if model.sound_proj is not None:
        assert torch.equal(model.sounding_feature(x[:, 12:], sounding=_sounding(x[:, :12])),
                           model.sounding_feature(x)[:, 12:])
