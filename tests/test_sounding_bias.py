"""model.sounding_output_bias (aurl.model.sounding_bias): the note state shifts the NOTE_ON / NOTE_OFF logits,
in the full forward, the chunked training loss and the grammar term alike. (The KV-cached and compiled decode
with the key on: tests/test_vaegan.py and tests/test_stepper.py.)"""

from __future__ import annotations

import pytest
import torch
from test_vaegan import _real_windows, _walker_sounding, batch, tiny

from aurl.model import MusicTransformerVAEGAN
from aurl.model.head_loss import chunked_ce_sum
from aurl.model.sounding_bias import GAIN
from aurl.vocab import NOTE_OFF_OFFSET, NOTE_ON_OFFSET, NUM_PITCHES, PAD_ID

ON_SOUNDING, OFF_SILENT = -0.05, -0.1  # stored values; the logits move by GAIN times these


def twins(mode: str = "transformer", **kw) -> tuple[MusicTransformerVAEGAN, MusicTransformerVAEGAN]:
    """(without the bias, with it), the very same other weights; the bias set non-zero."""
    torch.manual_seed(0)
    off = MusicTransformerVAEGAN(tiny(mode, sounding_embedding=True, **kw))
    on = MusicTransformerVAEGAN(tiny(mode, sounding_embedding=True, sounding_output_bias=True, **kw))
    with torch.no_grad():
        off.sound_proj.weight.normal_(0, 0.5)
    assert not on.sound_bias.any()  # zero at first: a model without the key transfers in unchanged
    on.load_state_dict({**off.state_dict(), "sound_bias": torch.tensor([ON_SOUNDING, OFF_SILENT])})
    return off.eval(), on.eval()


def test_the_bias_moves_note_on_of_sounding_and_note_off_of_silent_pitches_only():
    """logits(on) - logits(off) is GAIN * on_sounding at NOTE_ON of each pitch the Walker has sounding after
    the position, GAIN * off_silent at NOTE_OFF of each silent one, and exactly zero at every other token;
    with the bias at zero the two models agree exactly."""
    off, on = twins()
    ids = _real_windows(n_pieces=2, per_piece=2)
    sounding = torch.stack([_walker_sounding(row) for row in ids.tolist()]).float()  # [B, T, 88]
    with torch.no_grad():
        delta = on.decode(ids) - off.decode(ids)
    on_block = delta[..., NOTE_ON_OFFSET:NOTE_ON_OFFSET + NUM_PITCHES]
    off_block = delta[..., NOTE_OFF_OFFSET:NOTE_OFF_OFFSET + NUM_PITCHES]
    # float32: the shift is added to logits of size ~1, so the difference carries their rounding (~1e-7)
    torch.testing.assert_close(on_block, GAIN * ON_SOUNDING * sounding, atol=1e-5, rtol=0)
    torch.testing.assert_close(off_block, GAIN * OFF_SILENT * (1 - sounding), atol=1e-5, rtol=0)
    rest = torch.cat([delta[..., :NOTE_ON_OFFSET], delta[..., NOTE_OFF_OFFSET + NUM_PITCHES:]], dim=-1)
    assert torch.equal(rest, torch.zeros_like(rest))
    assert 0 < sounding.mean() < 0.5  # both cases occur: the comparison is not of one constant
    with torch.no_grad():
        on.sound_bias.zero_()
        assert torch.equal(on.decode(ids), off.decode(ids))


@pytest.mark.parametrize("mode", ["transformer", "vae"])
def test_chunked_loss_equals_the_full_logits_loss_with_the_bias(mode):
    """The chunked head loss (train.activation_checkpointing) with the bias on: the same loss and gradients
    (the bias's own included) as the loss over the whole logits; and chunk by chunk (7 tokens, not a
    multiple), the sounding states stay aligned with their hidden states. Tolerances as in
    tests/test_speed.py's checkpointing test; measured here: loss and gradients equal (one chunk), the
    7-token chunks' sum within 2e-4 of ~700 nats (3e-7 relative, inside assert_close's float32 rtol)."""
    _, model = twins(mode)
    model.train()
    ids = _real_windows(n_pieces=1, per_piece=3, length=40)
    mask = torch.ones_like(ids, dtype=torch.bool)
    results = []
    for chunked in (False, True):
        model.chunked_loss = chunked
        model.zero_grad()
        torch.manual_seed(1)  # the vae's z draw
        out = model(ids, mask)
        out.loss.backward()
        results.append((out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                                             if p.grad is not None}))
    (full_loss, full_grads), (ck_loss, ck_grads) = results
    assert abs(float(ck_loss) - float(full_loss)) < 1e-5
    assert full_grads["sound_bias"].abs().min() > 0 and sorted(ck_grads) == sorted(full_grads)
    for name, g in full_grads.items():
        torch.testing.assert_close(ck_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)

    model.eval()
    inp, tgt = ids[:, :-1], ids[:, 1:]
    with torch.no_grad():
        h, states = model.decode_hidden(inp)
        logits = model.decode(inp)
    plain = torch.nn.functional.cross_entropy(logits.transpose(1, 2), tgt, reduction="sum")
    chunks = chunked_ce_sum(tgt, mask[:, 1:], hidden=h, head=model.head, states=states, chunk=7)
    torch.testing.assert_close(chunks, plain)


def test_the_grammar_term_and_validation_see_the_bias():
    """model.grammar_unlikelihood scores the logits the bias shifted: a strongly negative bias leaves less
    forbidden mass than the same model without it; the validation NLL is the CE of those logits too."""
    off, on = twins(grammar_unlikelihood=1.0)
    ids = _real_windows(n_pieces=2, per_piece=2)
    mask = ids != PAD_ID
    with torch.no_grad():
        on.sound_bias.fill_(-0.3)  # -9.6 nats
        mass_off = off(ids, mask).metrics["grammar/illegal_mass"]
        mass_on = on(ids, mask).metrics["grammar/illegal_mass"]
        val_off = off(ids, mask, phase="validate").metrics["ce"]
        val_on = on(ids, mask, phase="validate").metrics["ce"]
    assert mass_on < 0.5 * mass_off, (float(mass_on), float(mass_off))  # measured 0.006 vs 0.119
    assert val_on < val_off  # 1931 vs 1967 nats measured: the windows seldom hold such a token


def test_transfer_adds_the_bias_at_zero_and_reports_dropping_it():
    from aurl.model.transfer import transfer_weights

    off, on = twins()
    fresh = MusicTransformerVAEGAN(on.cfg).eval()
    report = transfer_weights(off.state_dict(), off.cfg, fresh)
    x, _ = batch(b=2, t=20)
    assert report.exact and "sound_bias" in report.fresh and torch.equal(fresh.decode(x), off.decode(x))
    back = MusicTransformerVAEGAN(off.cfg)
    report = transfer_weights(on.state_dict(), on.cfg, back)
    assert "sound_bias" in report.dropped and not report.exact


def test_model_file_without_the_key_loads_with_it_off(tmp_path):
    """A model file written before model.sounding_output_bias existed loads with it off and computes what it
    did; one written with it on loads on, with its bias."""
    from aurl.model.checkpoint import load_model_file, save_model_file

    off, on = twins()
    path = save_model_file(tmp_path / "old.pt", off, off.cfg)
    blob = torch.load(path, weights_only=True)
    del blob["config"]["sounding_output_bias"]
    torch.save(blob, path)
    loaded, cfg, _ = load_model_file(path)
    x, _ = batch(b=2, t=16)
    assert cfg.sounding_output_bias is False and loaded.sound_bias is None
    assert torch.equal(loaded.decode(x), off.decode(x))
    loaded, cfg, _ = load_model_file(save_model_file(tmp_path / "new.pt", on, on.cfg))
    assert cfg.sounding_output_bias is True and torch.equal(loaded.sound_bias, on.sound_bias)
