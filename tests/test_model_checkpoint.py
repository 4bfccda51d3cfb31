"""Self-describing model files: round trip with weights_only, sidecar, and refusals that name the problem."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from test_vaegan import batch, tiny

from aurl.console import UserError
from aurl.model import ModelConfig, MusicTransformerVAEGAN
from aurl.model.checkpoint import load_model_file, load_model_state, save_model_file
from aurl.vocab import START_ID


def cfg(mode="vae_gan") -> ModelConfig:
    return ModelConfig(mode=mode, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, dropout=0.0,
                       latent_dim=8, encoder_layers=1, disc_d_model=32, disc_layers=1, disc_heads=2)


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(cfg()).eval()
    path = save_model_file(tmp_path / "best_model.pt", model, cfg(), {"val/recon": torch.tensor(2.5)},
                           {"step": 7, "stage": 2})
    return path, model


def test_round_trip(saved):
    path, model = saved
    blob = torch.load(path, weights_only=True)  # plain data only
    assert blob["config"]["mode"] == "vae_gan" and blob["metrics"]["val/recon"] == 2.5
    loaded, c, meta = load_model_file(path)
    assert c == cfg() and meta["extra"]["step"] == 7 and not loaded.training
    x = torch.randint(4, 700, (2, 16))
    x[:, 0] = START_ID
    assert torch.equal(loaded(x, x > 0).loss, model(x, x > 0).loss)
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["config"]["d_model"] == 32 and side["weights_file"] == "best_model.pt" and "model_state" not in side
    assert side["num_parameters"] == model.num_parameters()


def test_wrapped_model_is_unwrapped(tmp_path):
    class Wrapper(torch.nn.Module):  # like DDP: the real model under .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    model = MusicTransformerVAEGAN(cfg("transformer"))
    path = save_model_file(tmp_path / "m.pt", Wrapper(model), cfg("transformer"))
    state, _, _ = load_model_state(path)
    assert set(state) == set(model.state_dict())


def test_refuses_other_vocabulary(saved, monkeypatch):
    path, _ = saved
    import aurl.model.checkpoint as ck

    other = {**ck.vocab_spec(), "time_step_ms": 10.0}  # as if this code's vocabulary had changed
    monkeypatch.setattr(ck, "vocab_hash", lambda: "0" * 64)
    monkeypatch.setattr(ck, "vocab_spec", lambda: other)
    with pytest.raises(UserError, match="vocabulary differs.*time_step_ms"):
        load_model_file(path)


def test_refuses_config_mismatch_naming_fields(saved):
    path, _ = saved
    with pytest.raises(UserError, match=r"d_model: file 32 vs expected 64"):
        load_model_file(path, expected=replace(cfg(), d_model=64))


def test_refuses_unknown_config_field_and_wrong_weights(tmp_path, saved):
    path, _ = saved
    blob = torch.load(path, weights_only=True)
    blob["config"]["flux_capacitor"] = 3
    torch.save(blob, tmp_path / "odd.pt")
    with pytest.raises(UserError, match="flux_capacitor"):
        load_model_file(tmp_path / "odd.pt")
    blob = torch.load(path, weights_only=True)
    blob["config"]["d_model"] = 64
    torch.save(blob, tmp_path / "wide.pt")
    with pytest.raises(UserError, match="do not match"):
        load_model_file(tmp_path / "wide.pt")
    blob = torch.load(path, weights_only=True)
    del blob["model_state"]["tok_emb.weight"]
    torch.save(blob, tmp_path / "short.pt")
    with pytest.raises(UserError, match="missing 1 tensors.*tok_emb"):
        load_model_file(tmp_path / "short.pt")


@pytest.mark.parametrize("content,match", [(None, "no such file"), (b"garbage", "not a readable model file"),
                                           ({"a": 1}, "not an aurl model file")], ids=["missing", "garbage", "other"])
def test_refuses_bad_files(tmp_path, content, match):
    p = tmp_path / "x.pt"
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        torch.save(content, p)
    with pytest.raises(UserError, match=match):
        load_model_file(p)


def test_next_stage_starts_from_the_previous_file(saved):
    from aurl.model import init_from_model_file

    path, model = saved  # a vae_gan file; start a deeper vae_gan from it
    bigger = MusicTransformerVAEGAN(replace(cfg(), n_layers=3)).eval()
    report, meta = init_from_model_file(path, bigger)
    assert meta["extra"]["stage"] == 2 and report.exact and "decoder.blocks.2.attn.o.weight" in report.grown
    x = torch.randint(4, 700, (2, 16))
    assert torch.allclose(bigger(x, x > 0).loss, model(x, x > 0).loss, atol=1e-5)
    stats = bigger.latent_stats(x, x > 0)
    assert stats["kl_per_dim"].shape == (8,) and stats["mu_var_per_dim"].shape == (8,)


def test_the_model_file_records_the_window_it_was_trained_on(tmp_path):
    """seq_len (data.seq_len) is in the file and its sidecar; context_length reads it (files without it:
    max_seq_len); a window longer than the model's context is refused."""
    from aurl.model.checkpoint import context_length

    mcfg = cfg("transformer")
    model = MusicTransformerVAEGAN(mcfg)
    path = save_model_file(tmp_path / "m.pt", model, mcfg, {}, {}, seq_len=40)
    _, cfg2, meta = load_model_file(path)
    assert meta["seq_len"] == 40 == context_length(cfg2, meta)
    assert json.loads(path.with_suffix(".json").read_text())["seq_len"] == 40
    assert context_length(cfg2, {k: v for k, v in meta.items() if k != "seq_len"}) == mcfg.max_seq_len
    with pytest.raises(ValueError, match="seq_len"):
        save_model_file(tmp_path / "n.pt", model, mcfg, {}, {}, seq_len=mcfg.max_seq_len + 1)


def test_refuses_a_checkpoint_of_the_previous_vocabulary(saved, tmp_path):
    """A model file written under vocabulary version 1 (as its vocab_spec and hash say) is refused, naming
    what differs, not loaded onto token ids that now mean other things."""
    import torch
    from midi_factory import spec_hash, vocab_v1_spec

    path, _ = saved
    blob = torch.load(path, weights_only=True)
    old = vocab_v1_spec()
    blob.update(vocab_spec=old, vocab_hash=spec_hash(old))
    torch.save(blob, tmp_path / "v1.pt")
    with pytest.raises(UserError, match="vocabulary differs.*version 1, this code's 2.*instrument.*max_shift_steps.*note_scope.*version"):
        load_model_file(tmp_path / "v1.pt")


def test_model_file_without_the_sounding_key_loads_with_it_off(tmp_path):
    """A model file written before model.sounding_embedding existed (no such config field, no sound_proj
    weight) loads as off and computes what it did; one written with it on loads on."""
    from aurl.model.checkpoint import load_model_file, save_model_file

    torch.manual_seed(0)
    old = MusicTransformerVAEGAN(tiny("transformer")).eval()
    path = save_model_file(tmp_path / "old.pt", old, tiny("transformer"))
    blob = torch.load(path, weights_only=True)
    del blob["config"]["sounding_embedding"]
    torch.save(blob, path)
    loaded, cfg, _ = load_model_file(path)
    x, _ = batch(b=2, t=16)
    assert cfg.sounding_embedding is False and loaded.sound_proj is None
    assert torch.equal(loaded.decode(x), old.decode(x))
    on = MusicTransformerVAEGAN(tiny("transformer", sounding_embedding=True)).eval()
    loaded, cfg, _ = load_model_file(save_model_file(tmp_path / "new.pt", on, on.cfg))
    assert cfg.sounding_embedding is True and loaded.sound_proj is not None


def test_refuses_another_format_version_a_bad_config_and_extra_weights(saved, tmp_path):
    """Each refusal names the file and what is wrong: a format version this code does not read, a config that
    fails ModelConfig.validate (load_model_state checks it, so init_from_model_file refuses it too), a tensor
    the config has no place for."""
    path, _ = saved
    cases = {
        "v2.pt": (lambda b: b.update(format_version=2), "format version 2, this code reads 1"),
        "heads.pt": (lambda b: b["config"].update(n_heads=3), r"model\.n_heads = 3"),
        "extra.pt": (lambda b: b["model_state"].update({"flux.weight": torch.zeros(2)}),
                     r"unexpected 1 tensors \(e\.g\. flux\.weight\)"),
    }
    for name, (edit, match) in cases.items():
        blob = torch.load(path, weights_only=True)
        edit(blob)
        torch.save(blob, tmp_path / name)
        with pytest.raises(UserError, match=rf"checkpoint {tmp_path / name}: .*{match}"):
            load_model_file(tmp_path / name)
    with pytest.raises(UserError, match=rf"checkpoint {tmp_path / 'heads.pt'}: model\.n_heads = 3"):
        load_model_state(tmp_path / "heads.pt")
    assert len(cases) == 3


def test_a_config_field_the_file_lacks_is_named_in_a_warning(tmp_path, capsys):
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer"))
    path = save_model_file(tmp_path / "old.pt", model, tiny("transformer"))
    blob = torch.load(path, weights_only=True)
    del blob["config"]["sounding_output_bias"], blob["config"]["grammar_unlikelihood"]
    torch.save(blob, path)
    load_model_file(path)
    err = capsys.readouterr().err
    assert "model config lacks grammar_unlikelihood, sounding_output_bias; using today's defaults" in err


def test_save_refuses_a_config_that_is_not_the_models_and_a_window_outside_its_context(tmp_path):
    from aurl.model.checkpoint import context_length

    model = MusicTransformerVAEGAN(cfg("transformer"))
    with pytest.raises(ValueError, match="not the config this model was built with"):
        save_model_file(tmp_path / "m.pt", model, replace(cfg("transformer"), d_model=64))
    for bad in (0, cfg().max_seq_len + 1):
        with pytest.raises(ValueError, match=rf"seq_len {bad} outside \[1, max_seq_len=64\]"):
            save_model_file(tmp_path / "m.pt", model, cfg("transformer"), seq_len=bad)
    assert not (tmp_path / "m.pt").exists()
    # a (hand-edited) window longer than the model's context is capped at max_seq_len
    assert context_length(cfg(), {"seq_len": 10_000}) == 64


def test_a_state_dict_under_nested_wrappers_is_saved_with_plain_names(tmp_path):
    """DDP (module.), torch.compile (_orig_mod.) and their nesting, twice the same one included: the file holds
    the model's own names, so it loads."""
    model = MusicTransformerVAEGAN(cfg("transformer"))
    plain = model.state_dict()
    for prefix in ("module.", "module._orig_mod.", "module.module.", "_orig_mod._orig_mod."):
        path = save_model_file(tmp_path / "m.pt", {prefix + k: v for k, v in plain.items()}, cfg("transformer"))
        state, _, _ = load_model_state(path)
        assert sorted(state) == sorted(plain) and len(state) == len(plain) > 10
        load_model_file(path)


def test_resolve_device_refuses_a_bad_name_and_cuda_without_a_gpu():
    from aurl.model.checkpoint import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UserError, match="--device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda: no CUDA device here"):
            resolve_device("cuda")


def test_starting_from_a_file_whose_weights_cannot_be_transferred_is_a_user_error(saved, tmp_path):
    """A tensor of the wrong rank (a damaged or hand-edited file) is refused as the user's input, one line naming
    the file and the tensor, not a ValueError traceback from the transfer."""
    from aurl.model import init_from_model_file

    path, _ = saved
    blob = torch.load(path, weights_only=True)
    blob["model_state"]["tok_emb.weight"] = torch.zeros(7)
    torch.save(blob, tmp_path / "flat.pt")
    with pytest.raises(UserError, match=r"flat\.pt: cannot start this model from it \(tok_emb\.weight: cannot grow"):
        init_from_model_file(tmp_path / "flat.pt", MusicTransformerVAEGAN(cfg()))


def test_unwrap_looks_through_compile_and_ddp_like_wrappers_in_any_nesting():
    """The one unwrap: torch.compile's module (._orig_mod, compiled lazily: nothing is compiled here) and a
    DDP-like .module, nested either way, give back the model itself."""
    from aurl.model.checkpoint import unwrap

    class Wrapper(torch.nn.Module):  # like DDP: the real model under .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    model = MusicTransformerVAEGAN(cfg("transformer"))
    for wrapped in (torch.compile(model), Wrapper(torch.compile(model)), torch.compile(Wrapper(model)), model):
        assert unwrap(wrapped) is model
