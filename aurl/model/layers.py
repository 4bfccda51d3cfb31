"""Transformer building blocks: RMSNorm, rotary attention with an optional KV cache, pre-norm blocks.

Why RoPE (rotary position embedding) and not ALiBi or Music Transformer's relative bias: RoPE encodes the
relative offset by rotating q and k before the dot product, so attention is still a plain
``F.scaled_dot_product_attention(q, k, v, is_causal=True)`` call and PyTorch can pick its fused kernels
(flash / memory-efficient on GPU). ALiBi or a learned relative bias must be passed as an additive L x L
``attn_mask``, which rules out the flash kernel and costs O(L^2) memory per head at L = 2,048. RoPE has no
parameters, so a checkpoint does not depend on max_seq_len, and because scores depend only on offsets,
prepending context or continuing past a cached prefix changes nothing for the tokens already seen.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Rotary(nn.Module):
    """cos/sin tables for RoPE in float32, built on demand per device. Plain attributes, not buffers: never
    part of a checkpoint, and model.to(bfloat16) cannot round the angles of far positions."""

    def __init__(self, head_dim: int, base: float, max_len: int):
        super().__init__()
        self.head_dim, self.base, self.max_len = head_dim, base, max_len
        self.cos = self.sin = torch.empty(0, head_dim // 2)  # rank 2 from the start: one compiled graph

    def _build(self, length: int, device: torch.device) -> None:
        inv_freq = 1.0 / (self.base ** (torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim))
        ang = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)  # [L, Dh/2]
        self.cos = ang.cos().float().to(device)
        self.sin = ang.sin().float().to(device)

    def forward(self, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if start + length > self.cos.shape[0] or self.cos.device != device:
            self._build(max(start + length, self.max_len, 2 * self.cos.shape[0]), device)
        return self.cos[start : start + length], self.sin[start : start + length]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (first half, second half) of x [B, H, T, Dh] by the position angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    c, s = cos[None, None], sin[None, None]
    return torch.cat((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).type_as(x)


class KVCache:
    """Preallocated keys/values of every layer for incremental decoding: [B, H, max_len, Dh] each."""

    def __init__(self, n_layers: int, batch: int, n_heads: int, max_len: int, head_dim: int, device, dtype):
        shape = (batch, n_heads, max_len, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_len = max_len
        self.length = 0  # tokens already stored
        self.sounding: torch.Tensor | None = None  # [B, 88] bool: pitches sounding after the last token stored
        # per layer, a copy of the q, k and v weights stacked [3 d, d], taken when the cache is made: one
        # decoded token's three projections are then one matrix-vector product (None: three)
        self.qkv: list[torch.Tensor] | None = None


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads, self.head_dim = n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.k = nn.Linear(d_model, d_model, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.o = nn.Linear(d_model, d_model, bias=False)

    def stacked_qkv(self) -> torch.Tensor:
        """The q, k and v weights as one [3 d, d] matrix (a copy: KVCache.qkv)."""
        return torch.cat([self.q.weight, self.k.weight, self.v.weight]).detach()

    def forward(self, x, cos, sin, causal: bool, cache: KVCache | None = None, layer: int = 0,
                key_mask: torch.Tensor | None = None):
        """x [B, T, d], or [B, d] for one token (see Stack.forward). key_mask (bidirectional stacks only):
        [B, 1, 1, T] bool, True at keys that may be attended to."""
        B, T = x.shape[0], (x.shape[1] if x.dim() == 3 else 1)
        H, Dh = self.n_heads, self.head_dim
        if x.dim() == 2 and cache is not None and cache.qkv is not None:
            # one decoded token: a third of the kernel calls, each weight read in one pass (bench/RESULTS.md)
            q, k, v = F.linear(x, cache.qkv[layer]).view(B, 3, H, 1, Dh).unbind(1)
        else:
            q = self.q(x).view(B, T, H, Dh).transpose(1, 2)
            k = self.k(x).view(B, T, H, Dh).transpose(1, 2)
            v = self.v(x).view(B, T, H, Dh).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, is_causal = key_mask, causal
        assert key_mask is None or not causal, "the causal decoder needs no key mask: PAD only ever follows"
        if cache is not None:
            assert causal, "only the causal decoder keeps a cache"
            pos = cache.length
            assert pos + T <= cache.max_len, "KV cache overflow"
            cache.k[layer][:, :, pos : pos + T] = k
            cache.v[layer][:, :, pos : pos + T] = v
            k, v = cache.k[layer][:, :, : pos + T], cache.v[layer][:, :, : pos + T]
            if T == 1:
                is_causal = False  # one new query may see every cached key
            elif pos > 0:  # a chunk after a cached prefix: causal with an offset
                is_causal = False
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(diagonal=pos)
        # no dropout on the attention weights: it would force SDPA's math path on CPU (an L x L random mask
        # per head: 10x slower at L = 2,048); the block drops out its residual branches instead
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)
        return self.o(y.transpose(1, 2).reshape(*x.shape[:-1], H * Dh))


def key_padding_mask(pad_mask: torch.Tensor) -> torch.Tensor | None:
    """[B, T] bool (True = real token) -> SDPA's boolean attn_mask [B, 1, 1, T], or None without padding.

    Why this form: a boolean mask broadcast over heads and queries is O(B * T), not a materialized
    [B, H, T, T] float bias, and SDPA's memory-efficient kernel accepts it (fused on GPU; the CPU fused kernel
    too). A batch without PAD passes None, which keeps the flash kernel (it takes no mask at all). Every row
    keeps at least its first key (a window has >= 1 real token), so no query row is all -inf (NaN).
    """
    if not torch.compiler.is_compiling() and bool(pad_mask.all()):  # compiled: always the mask (no graph break)
        return None
    keep = pad_mask.bool().clone()
    keep[:, 0] = True  # an all-PAD row (never produced by the loaders) would otherwise give NaN, not zeros
    return keep[:, None, None, :]


class MLP(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x):
        return self.down(F.gelu(self.up(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = Attention(d_model, n_heads)
        self.mlp_norm = RMSNorm(d_model)
        self.mlp = MLP(d_model, d_ff)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cos, sin, causal: bool, cache: KVCache | None = None, layer: int = 0,
                key_mask: torch.Tensor | None = None):
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin, causal, cache, layer, key_mask))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


class Stack(nn.Module):
    """Blocks + final norm over an embedded sequence; causal (decoder) or bidirectional (encoder, D)."""

    def __init__(self, d_model, n_layers, n_heads, d_ff, dropout, causal: bool, rope_base: float, max_len: int):
        super().__init__()
        self.causal = causal
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_ff, dropout) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        self.rotary = Rotary(d_model // n_heads, rope_base, max_len)
        # train.activation_checkpointing: keep only each block's input, recompute the block in the backward
        # pass (dropout masks come back the same: checkpoint restores the RNG state)
        self.checkpointing = False

    def forward(self, x: torch.Tensor, cache: KVCache | None = None,
                pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """pad_mask [B, T] bool (bidirectional stacks): True at real tokens; PAD keys are then never attended
        to, so what a real position computes does not depend on how much PAD follows the window."""
        T = x.shape[1]
        start = cache.length if cache is not None else 0
        cos, sin = self.rotary(start, T, x.device)
        key_mask = key_padding_mask(pad_mask) if pad_mask is not None and not self.causal else None
        recompute = self.checkpointing and cache is None and torch.is_grad_enabled()
        # one cached token runs on [B, d]: compiled, a [1, 1, d] hidden state would reach each matrix product
        # as a [1, d] view with stride 0, which ATen's mm copies first (12 copies a decoded token)
        one_token = cache is not None and T == 1
        if one_token:
            x = x.squeeze(1)
        for i, block in enumerate(self.blocks):
            if recompute:
                x = checkpoint(block, x, cos, sin, self.causal, None, i, key_mask, use_reentrant=False)
            else:
                x = block(x, cos, sin, self.causal, cache, i, key_mask)
        if cache is not None:
            cache.length += T
        return self.norm(x).unsqueeze(1) if one_token else self.norm(x)


def init_weights(module: nn.Module, n_layers: int) -> None:
    """GPT-2 style: N(0, 0.02), residual output projections scaled down by sqrt(2 * layers)."""
    for name, p in module.named_parameters():
        if p.dim() < 2:
            continue
        std = 0.02
        if name.endswith("attn.o.weight") or name.endswith("mlp.down.weight"):
            std = 0.02 / math.sqrt(2 * max(1, n_layers))
        nn.init.normal_(p, mean=0.0, std=std)
