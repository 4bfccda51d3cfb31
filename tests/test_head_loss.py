"""aurl.model.head_loss.chunked_ce_sum: the training loss over the head in chunks equals the plain
cross-entropy sum, value and gradients. (With the sounding output bias on: test_sounding_bias.py.)"""

from __future__ import annotations

import functools

import torch

from aurl.model.head_loss import chunked_ce_sum
from aurl.vocab import VOCAB_SIZE


def test_chunked_cross_entropy_equals_the_plain_sum():
    """Chunks of 7 tokens over 3 x 20 targets (not a multiple), from hidden states and from logits."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 20, 16, generator=g, requires_grad=True)
    w = torch.randn(VOCAB_SIZE, 16, generator=g, requires_grad=True)
    tgt = torch.randint(0, VOCAB_SIZE, (3, 20), generator=g)
    mask = torch.rand(3, 20, generator=g) > 0.3
    logits = torch.nn.functional.linear(h, w)
    plain = (torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB_SIZE), tgt.reshape(-1), reduction="none")
             * mask.reshape(-1)).sum()
    (gh, gw) = torch.autograd.grad(plain, (h, w))
    head = functools.partial(torch.nn.functional.linear, weight=w)
    for kwargs in ({"hidden": h, "head": head}, {"logits": torch.nn.functional.linear(h, w)}):
        chunked = chunked_ce_sum(tgt, mask, chunk=7, **kwargs)
        torch.testing.assert_close(chunked, plain)
        ch, cw = torch.autograd.grad(chunked, (h, w))
        torch.testing.assert_close(ch, gh)
        torch.testing.assert_close(cw, gw)
