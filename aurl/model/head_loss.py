"""Cross-entropy over the 774-token head without materialising the whole logits tensor (train.activation_checkpointing).

Why: the plain loss keeps, per target token, the logits, their fp32 copy and log-softmax's output for the
backward pass (4 x 774 x 4 bytes = 12 KiB per token, 400 MiB for a 16 x 2,048 micro-batch), next to blocks
that keep about 2 KiB per token once they are checkpointed. Here the tokens are cut into chunks; each chunk's
logits are computed, reduced to a summed cross-entropy and dropped, and torch.utils.checkpoint recomputes
them in the backward pass. Only the chunk's input (the hidden states, or the logits when the caller holds
them anyway) is kept, and at most one chunk of logits exists at a time. The cost: the head's matmul twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_TOKENS = 4096  # 4,096 x 774 fp32 logits = 12 MiB alive at a time


def _hidden_chunk_ce(head, h: torch.Tensor, states: torch.Tensor | None, targets: torch.Tensor,
                     mask: torch.Tensor):
    logits = (head(h) if states is None else head(h, states)).float()
    return (F.cross_entropy(logits, targets, reduction="none") * mask).sum()


def _logits_chunk_ce(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor):
    return (F.cross_entropy(logits.float(), targets, reduction="none") * mask).sum()


def chunked_ce_sum(targets: torch.Tensor, mask: torch.Tensor, hidden: torch.Tensor | None = None,
                   head: Callable | None = None, states: torch.Tensor | None = None,
                   logits: torch.Tensor | None = None, chunk: int = CHUNK_TOKENS) -> torch.Tensor:
    """Sum of the cross-entropy (fp32) at the masked targets [B, T], from hidden [B, T, d] and the output
    head (head(hidden) -> logits, or head(hidden, states) with per-token states [B, T, ...] such as the
    sounding notes its output bias reads; logits never whole), or from logits [B, T, V] the caller holds."""
    assert (hidden is None) != (logits is None), "give hidden (+ head) or logits"
    t = targets.reshape(-1)
    m = mask.reshape(-1).float()
    total = torch.zeros((), dtype=torch.float32, device=t.device)
    if hidden is not None:
        h = hidden.reshape(-1, hidden.shape[-1])
        st = None if states is None else states.reshape(-1, states.shape[-1])
        for s in range(0, h.shape[0], chunk):
            # the head's parameters are reached through the callable: the non-reentrant checkpoint recomputes
            # with them and gives them their gradients
            st_chunk = None if st is None else st[s:s + chunk]
            total = total + checkpoint(_hidden_chunk_ce, head, h[s:s + chunk], st_chunk, t[s:s + chunk],
                                       m[s:s + chunk], use_reentrant=False)
    else:
        flat = logits.reshape(-1, logits.shape[-1])
        for s in range(0, flat.shape[0], chunk):
            total = total + checkpoint(_logits_chunk_ce, flat[s:s + chunk], t[s:s + chunk], m[s:s + chunk],
                                       use_reentrant=False)
    return total
