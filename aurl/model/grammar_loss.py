"""The grammar unlikelihood term (model.grammar_unlikelihood): teach the model that illegal tokens are illegal.

Why: the next-token loss only raises the probability of the token that came; it never says that a NOTE_OFF of
a silent pitch is impossible. A small model trained for a few hundred steps leaves a few percent of its mass on
such tokens, and raw sampling (no grammar-constrained decoding) at temperature 1.0 writes them: each one puts
the stream off the training distribution and makes the next error likelier. Unlikelihood training (Welleck et
al. 2020, "Neural text generation with unlikelihood training") adds, per scored position,

    -log(1 - P_illegal)

where P_illegal is the model's total probability of the tokens the grammar forbids there. The set is exact,
computed from the window's own tokens by the grammar's rule in its (instrument, pitch) scope
(aurl.model.sounding.scoped_states: the state before each target): a NOTE_ON of a pitch sounding on the
instrument in force, a NOTE_OFF of a pitch silent on it, END while any note sounds, and PAD / START / UNK
(never legal inside a piece). The term is zero when the model puts no mass there, so it does
not fight the likelihood of real data; its gradient only moves mass off forbidden tokens.
"""

from __future__ import annotations

import torch

from aurl.model.sounding import forbidden_next, scoped_states
from aurl.vocab import (
    PAD_ID,
    START_ID,
    UNK_ID,
)

_ALWAYS_ILLEGAL = (PAD_ID, START_ID, UNK_ID)


def illegal_mask(inputs: torch.Tensor) -> torch.Tensor:
    """[B, T] input ids -> [B, T, 774-wide] bool: the tokens the grammar forbids as the NEXT token after each
    input position (the state after inputs[:, :t+1]; a window carries its state as a prefix, so the window's
    own tokens give the whole state)."""
    here, anything, _ = scoped_states(inputs)  # pitches sounding on the instrument in force; any note at all
    mask = forbidden_next(here, anything)
    mask[..., list(_ALWAYS_ILLEGAL)] = True
    return mask


def illegal_log_mass(logits: torch.Tensor, illegal: torch.Tensor) -> torch.Tensor:
    """log P_illegal [B, T] from logits [B, T, V] and the forbidden-token mask [B, T, V]."""
    logits = logits.float()
    total = torch.logsumexp(logits, dim=-1)
    forbidden = torch.logsumexp(logits.masked_fill(~illegal, float("-inf")), dim=-1)
    return forbidden - total


def unlikelihood(logits: torch.Tensor, inputs: torch.Tensor, target_mask: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(-log(1 - P_illegal) averaged over scored positions, P_illegal averaged likewise (a metric))."""
    log_p = illegal_log_mass(logits, illegal_mask(inputs))
    # -log(1 - p) = -log(-expm1(log p)); log p is kept a hair below 0 so a model certain of an illegal token
    # gives a large finite loss instead of inf
    per_position = -torch.log(-torch.expm1(log_p.clamp(max=-1e-6)))
    weights = target_mask.to(per_position.dtype)
    n = weights.sum().clamp_min(1.0)
    return (per_position * weights).sum() / n, (log_p.exp() * weights).sum().detach() / n
