"""aurl.model.sampling: the logit filters, the option check, latent interpolation, stopping at END, and
grammar-constrained decoding on an untrained model (the grammar mask itself: test_grammar.py)."""

from __future__ import annotations

import math

import pytest
import torch
from test_vaegan import tiny

from aurl.console import UserError
from aurl.model import MusicTransformerVAEGAN
from aurl.model.sampling import check_sampling_options, filter_logits, generate, interpolate, make_generator
from aurl.vocab import END_ID, NOTE_OFF_OFFSET, NUM_PITCHES, PAD_ID, START_ID

LOGITS = torch.log(torch.tensor([[0.5, 0.25, 0.15, 0.1]]))


@pytest.mark.parametrize("top_k, top_p, kept", [(0, 1.0, 4), (2, 1.0, 2), (1, 1.0, 1), (0, 0.4, 1),
                                                 (0, 0.6, 2), (0, 0.7, 2), (0, 0.85, 3), (3, 0.6, 2)],
                         ids=lambda v: str(v))
def test_filters_keep_the_likeliest_tokens(top_k, top_p, kept):
    """top-k keeps k tokens; nucleus keeps the smallest prefix whose mass reaches top_p (masses 0.5, 0.75, 0.9, 1;
    values at a boundary are left out: float rounding decides them)."""
    x = filter_logits(LOGITS, 1.0, top_k, top_p)
    finite = torch.isfinite(x[0])
    assert int(finite.sum()) == kept
    assert finite[:kept].all()  # the likeliest ones, in order
    assert torch.allclose(x[0, :kept], LOGITS[0, :kept])


def test_temperature_scales_the_logits():
    for t in (0.5, 2.0):
        assert torch.allclose(filter_logits(LOGITS, t), LOGITS / t)


@pytest.mark.parametrize("temperature, top_k, top_p, flag", [(-0.1, 0, 1.0, "--temperature"),
                                                              (1.0, -1, 1.0, "--top-k"), (1.0, 0, 0.0, "--top-p"),
                                                              (1.0, 0, 1.5, "--top-p")])
def test_bad_options_are_refused_naming_the_flag(temperature, top_k, top_p, flag):
    with pytest.raises(UserError, match=flag):
        check_sampling_options(temperature, top_k, top_p)


def test_good_options_pass():
    for options in ((0.0, 0, 1.0), (1.0, 5, 0.9), (2.0, 0, 1e-3)):
        check_sampling_options(*options)


def test_slerp_ends_at_both_points_and_keeps_the_norm():
    a, b = torch.tensor([3.0, 0.0]), torch.tensor([0.0, 3.0])
    path = interpolate(a, b, 5)
    assert path.shape == (5, 2)
    assert torch.allclose(path[0], a) and torch.allclose(path[-1], b, atol=1e-6)
    assert torch.allclose(path.norm(dim=-1), torch.full((5,), 3.0))  # lerp's midpoint would have 3 / sqrt(2)
    assert math.isclose(float(interpolate(a, b, 3, "lerp")[1].norm()), 3 / math.sqrt(2), rel_tol=1e-6)


def test_stop_at_end_pads_after_end():
    """With stop_at_end a row may draw END, then only PAD; without it END is never drawn, however likely.
    Mutations: END banned whatever stop_at_end (no row ever ends) -> fails; END never banned -> fails (the
    model without stop_at_end draws it)."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer"))
    with torch.no_grad():
        model.tok_emb.weight[END_ID] *= 50  # make END likely
    out = generate(model, torch.full((3, 1), START_ID), 30, generator=make_generator(0), stop_at_end=True)
    assert out.shape == (3, 31)
    ended = 0
    for row in out.tolist():
        if END_ID in row:
            assert all(t == PAD_ID for t in row[row.index(END_ID) + 1 :])
            ended += 1
    assert ended > 0  # the comparison above ran on some row
    out = generate(model, torch.full((3, 1), START_ID), 30, generator=make_generator(0), stop_at_end=False)
    assert END_ID not in out.flatten().tolist() and PAD_ID not in out[:, 1:].flatten().tolist()


def closes_and_ends(model) -> None:
    """Make END tempting, and closing a note as tempting: the NOTE_OFF embedding rows set to END's (the head
    is tied), so an untrained model's rows close their notes and end."""
    with torch.no_grad():
        model.tok_emb.weight[END_ID] *= 20
        model.tok_emb.weight[NOTE_OFF_OFFSET : NOTE_OFF_OFFSET + NUM_PITCHES] = model.tok_emb.weight[END_ID]


def test_grammar_constrained_decoding_is_grammatical_where_raw_sampling_is_not():
    """An untrained model breaks the event grammar all the time; constrained decoding never does (only notes
    still open at the length cut-off remain), and END comes only once every note is closed: END and every
    NOTE_OFF are made likely (the NOTE_OFF rows set to END's), so rows close their notes and end (2 of 4,
    after 3 and 4 notes). Mutation: the sampler's mask with END always legal (no `anything`) -> fails."""
    from aurl.grammar import grammar_errors
    from aurl.vocab import NOTE_OFF_OFFSET, NOTE_ON_OFFSET

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer"))
    prompt = torch.full((4, 1), START_ID)
    prompt = torch.cat([prompt, torch.full((4, 1), NOTE_ON_OFFSET + 39)], 1)  # a prompt with a note sounding
    raw = generate(model, prompt, 200, generator=make_generator(1), grammar=False)
    assert sum(grammar_errors(row)["note_off_without_on"] for row in raw.tolist()) > 0
    closes_and_ends(model)
    ended = 0
    for use_cache in (True, False):
        out = generate(model, prompt, 200, generator=make_generator(1), grammar=True, use_cache=use_cache,
                       stop_at_end=True)
        for row in out.tolist():
            errs = grammar_errors(row)
            assert errs["note_off_without_on"] == errs["duplicate_note_on"] == errs["special_inside"] == 0, errs
            if END_ID in row:
                assert errs["unclosed_notes"] == 0, row
                ended += any(NOTE_ON_OFFSET <= t < NOTE_OFF_OFFSET for t in row[2:])  # notes were opened first
    assert ended >= 2  # the END rule was exercised


def test_filters_and_interpolation():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    assert torch.isinf(filter_logits(logits, 1.0, top_k=2)).tolist() == [[False, False, True, True]]
    kept = ~torch.isinf(filter_logits(logits, 1.0, top_p=0.8))
    assert kept.tolist() == [[True, True, False, False]]
    za, zb = torch.randn(8), torch.randn(8)
    path = interpolate(za, zb, 5)
    assert path.shape == (5, 8) and torch.allclose(path[0], za, atol=1e-5) and torch.allclose(path[-1], zb, atol=1e-5)


def test_posterior_draws_have_the_posterior_spread_times_the_scale():
    """sample_posterior draws mu + scale * sigma * eps with sigma = exp(logvar / 2). n = 20,000 draws per
    dimension; tolerance: 4 standard errors (of a standard deviation sigma / sqrt(2n) <= 0.01, of a mean
    sigma / sqrt(n) <= 0.014); measured: std off by <= 0.0022, mean by <= 0.028 (2 standard errors).
    Mutation: sigma = exp(logvar) -> fails (std 4 for 2)."""
    from aurl.model.sampling import sample_posterior

    n = 20_000
    mu = torch.tensor([[1.0, -3.0]]).expand(n, -1)
    logvar = torch.log(torch.tensor([[4.0, 0.25]])).expand(n, -1)  # sigma 2 and 0.5
    for scale in (1.0, 0.5):
        z = sample_posterior(mu, logvar, make_generator(0), scale=scale)
        sigma = torch.tensor([2.0, 0.5]) * scale
        assert torch.allclose(z.std(0), sigma, atol=4 * 2.0 / math.sqrt(2 * n))
        assert torch.allclose(z.mean(0), mu[0], atol=4 * 2.0 / math.sqrt(n))


def test_generate_hands_the_model_back_in_the_mode_it_found_it():
    """generate() and encode_posterior() run in eval mode and restore train mode after (the trainer samples
    between steps). Mutations: generate() without model.train(was_training) -> fails; encode_posterior()
    without it -> fails."""
    from aurl.model.sampling import encode_posterior

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae"))
    for training in (True, False):
        model.train(training)
        generate(model, torch.full((1, 1), START_ID), 3, generator=make_generator(0))
        assert model.training == training
        encode_posterior(model, torch.full((1, 4), START_ID))
        assert model.training == training
