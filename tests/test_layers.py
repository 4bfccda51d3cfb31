"""aurl.model.layers: RoPE, the KV cache path of attention, and the padding mask."""

from __future__ import annotations

import torch

from aurl.model.layers import Attention, KVCache, Rotary, apply_rope, key_padding_mask


def test_rope_scores_depend_only_on_the_offset():
    """q.k after RoPE at positions (i, j) equals the score at (i + s, j + s): attention sees relative position."""
    torch.manual_seed(0)
    rot = Rotary(head_dim=8, base=10000.0, max_len=64)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> float:
        ci, si = rot(i, 1, torch.device("cpu"))
        cj, sj = rot(j, 1, torch.device("cpu"))
        return float((apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum())

    pairs = [(5, 2), (9, 6), (40, 37)]
    assert len({round(score(i, j), 4) for i, j in pairs}) == 1
    assert abs(score(5, 2) - score(5, 4)) > 1e-3  # another offset, another score


def test_attention_with_a_kv_cache_equals_full_causal_attention():
    """Feeding tokens one at a time through the cache gives the full causal pass's outputs (measured
    difference ~1e-7 in float32)."""
    torch.manual_seed(0)
    attn, rot = Attention(d_model=16, n_heads=2), Rotary(8, 10000.0, 32)
    x = torch.randn(2, 6, 16)
    cos, sin = rot(0, 6, x.device)
    full = attn(x, cos, sin, causal=True)
    cache = KVCache(1, 2, 2, 32, 8, x.device, x.dtype)
    steps = []
    for t in range(6):
        c, s = rot(t, 1, x.device)
        steps.append(attn(x[:, t : t + 1], c, s, causal=True, cache=cache, layer=0))
        cache.length += 1
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)


def test_padding_mask_is_none_without_padding_and_keeps_the_first_key():
    assert key_padding_mask(torch.ones(2, 4, dtype=torch.bool)) is None
    pad = torch.tensor([[True, True, False, False], [False, False, False, False]])
    keep = key_padding_mask(pad)
    assert keep.shape == (2, 1, 1, 4)
    assert keep[0, 0, 0].tolist() == [True, True, False, False]
    assert keep[1, 0, 0].tolist() == [True, False, False, False]  # an all-PAD row keeps one key: no NaN
