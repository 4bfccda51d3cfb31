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


def _cached_and_full(length: int, chunks: list[tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One attention layer over `length` random positions: fed chunk by chunk (start, stop) through a KV cache,
    and in one full causal pass."""
    torch.manual_seed(0)
    attn, rot = Attention(d_model=16, n_heads=2), Rotary(8, 10000.0, 32)
    x = torch.randn(2, length, 16)
    cos, sin = rot(0, length, x.device)
    full = attn(x, cos, sin, causal=True)
    cache = KVCache(1, 2, 2, 32, 8, x.device, x.dtype)
    parts = []
    for start, stop in chunks:
        c, s = rot(start, stop - start, x.device)
        parts.append(attn(x[:, start:stop], c, s, causal=True, cache=cache, layer=0))
        cache.length += stop - start
    return torch.cat(parts, 1), full


def test_attention_with_a_kv_cache_equals_full_causal_attention():
    """Feeding tokens one at a time through the cache gives the full causal pass's outputs (measured
    difference ~1e-7 in float32)."""
    cached, full = _cached_and_full(6, [(t, t + 1) for t in range(6)])
    assert cached.shape == full.shape == (2, 6, 16)
    assert torch.allclose(cached, full, atol=1e-5)


def test_padding_mask_is_none_without_padding_and_keeps_the_first_key():
    assert key_padding_mask(torch.ones(2, 4, dtype=torch.bool)) is None
    pad = torch.tensor([[True, True, False, False], [False, False, False, False]])
    keep = key_padding_mask(pad)
    assert keep.shape == (2, 1, 1, 4)
    assert keep[0, 0, 0].tolist() == [True, True, False, False]
    assert keep[1, 0, 0].tolist() == [True, False, False, False]  # an all-PAD row keeps one key: no NaN


def test_a_chunk_after_a_cached_prefix_equals_full_causal_attention():
    """A multi-token chunk fed after a cached prefix (the offset causal mask) gives the full causal pass's
    outputs at all 7 positions (measured difference ~1e-7 in float32); a mask one key too wide does not."""
    cached, full = _cached_and_full(7, [(0, 4), (4, 7)])  # the prefix (pos = 0), then a chunk of 3 at pos = 4
    assert cached.shape == full.shape == (2, 7, 16)
    assert torch.allclose(cached, full, atol=1e-5)


def test_residual_output_projections_start_scaled_down_by_the_depth():
    """init_weights (GPT-2): N(0, 0.02) for every matrix, 0.02 / sqrt(2 * layers) for attn.o and mlp.down; the
    RMSNorm gains stay at 1.
    With 8 layers that is 0.005 (4x below). Each 64 x 64 matrix's sample std was measured within 1.7 % of its
    sigma over the 32 compared (the std of a 4,096-draw estimate is 1.1 %); we allow 10 %."""
    from aurl.model.layers import Stack, init_weights

    torch.manual_seed(0)
    stack = Stack(64, 8, 4, 64, 0.0, True, 10000.0, 32)
    init_weights(stack, n_layers=8)
    blocks = list(stack.blocks)
    assert len(blocks) == 8
    norms = [stack.norm] + [n for b in blocks for n in (b.attn_norm, b.mlp_norm)]
    assert len(norms) == 17 and all(bool((n.weight == 1).all()) for n in norms)  # vectors are left alone
    compared = 0
    for b in blocks:
        for w, sigma in ((b.attn.q.weight, 0.02), (b.mlp.up.weight, 0.02),
                         (b.attn.o.weight, 0.005), (b.mlp.down.weight, 0.005)):
            std = float(w.detach().std())
            assert abs(std / sigma - 1.0) < 0.1, (w.shape, std, sigma)
            compared += 1
    assert compared == 32


def test_dropout_acts_on_both_residual_branches_in_training_only():
    """Block: x + drop(attn(norm x)), then + drop(mlp(norm x)). With one branch silenced (its output projection
    zeroed), what the other adds in training is, element by element, 0 or 1 / (1 - p) = 2 times what it adds in
    eval; about half of the 2 x 8 x 16 = 256 elements are kept (measured 0.56 and 0.50; binomial std 0.03)."""
    from aurl.model.layers import Block

    torch.manual_seed(0)
    x = torch.randn(2, 8, 16)
    cos, sin = Rotary(8, 10000.0, 32)(0, 8, x.device)
    for silenced in ("attn.o", "mlp.down"):
        block = Block(16, 2, 32, dropout=0.5)
        torch.nn.init.zeros_(block.get_submodule(silenced).weight)
        with torch.no_grad():
            added_eval = block.eval()(x, cos, sin, causal=True) - x
            added_train = block.train()(x, cos, sin, causal=True) - x
        kept = added_train != 0
        assert added_eval.numel() == 256 and bool((added_eval != 0).all()), silenced
        assert torch.allclose(added_train[kept], 2 * added_eval[kept], atol=1e-6), silenced
        assert 0.35 < float(kept.float().mean()) < 0.65, (silenced, float(kept.float().mean()))
