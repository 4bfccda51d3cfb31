"""aurl.model.sampling (its non-grammar parts): the logit filters, the option check, latent interpolation."""

from __future__ import annotations

import math

import pytest
import torch

from aurl.console import UserError
from aurl.model.sampling import check_sampling_options, filter_logits, interpolate

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
