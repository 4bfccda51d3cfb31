"""model.grammar_unlikelihood: the forbidden-token set is exact, and training on the term moves mass off it."""

from __future__ import annotations

import numpy as np
import torch
from midi_factory import random_score

from aurl import codec, grammar, vocab
from aurl.model import MusicTransformerVAEGAN
from aurl.model.config import ModelConfig
from aurl.model.grammar_loss import illegal_log_mass, illegal_mask, unlikelihood
from aurl.model.sampling import _grammar_state, _mask_ungrammatical


def _windows(seed: int, length: int = 80) -> list[np.ndarray]:
    """Windows cut every few tokens from a multi-instrument piece, each with its state prefix (as the loader
    cuts them), plus the piece's START-anchored opening."""
    toks = codec.encode(random_score(seed, n_notes=160, n_programs=3)).astype(np.int64)
    out = [toks[:length]]
    for s in range(5, len(toks) - length, 23):
        out.append(np.concatenate([grammar.state_prefix(grammar.state_at(toks, s)), toks[s:s + length]]))
    return out


def test_no_real_next_token_is_ever_forbidden():
    """On grammatical windows, the token that actually comes next is never in the forbidden set (else the term
    would fight the data). Mutation: NOTE_OFF rows marked from `sounding` instead of `~sounding` -> fails."""
    checked = 0
    for seed in range(3):
        for w in _windows(seed):
            ids = torch.as_tensor(w)[None]
            mask = illegal_mask(ids[:, :-1])
            nxt = ids[:, 1:]
            flagged = mask.gather(-1, nxt.unsqueeze(-1)).squeeze(-1)
            assert not flagged.any(), (seed, int(flagged.nonzero()[0, 1]))
            checked += nxt.numel()
    assert checked > 5000


def test_the_forbidden_set_is_the_samplers_rule():
    """One rule: the term forbids exactly what grammar-constrained decoding masks (plus PAD/START/UNK, which
    decoding never reaches: they are never targets). Compared at every position of random streams."""
    g = torch.Generator().manual_seed(0)
    # note events of a few pitches and instrument changes (drum kit included), so notes sound across instruments
    pool = torch.cat([torch.arange(vocab.NOTE_ON_OFFSET, vocab.NOTE_ON_OFFSET + 5),
                      torch.arange(vocab.NOTE_OFF_OFFSET, vocab.NOTE_OFF_OFFSET + 5),
                      torch.arange(vocab.INSTRUMENT_OFFSET, vocab.INSTRUMENT_OFFSET + 3),
                      torch.tensor([vocab.DRUM_KIT_ID, vocab.TIME_SHIFT_OFFSET, vocab.VELOCITY_OFFSET])])
    compared = 0
    for _ in range(20):
        ids = pool[torch.randint(0, len(pool), (1, 64), generator=g)]
        mask = illegal_mask(ids)
        for t in range(ids.shape[1]):
            logits = torch.zeros(1, vocab.VOCAB_SIZE)
            _mask_ungrammatical(logits, _grammar_state(ids[:, :t + 1]))
            want = torch.isinf(logits[0])
            want[[vocab.PAD_ID, vocab.START_ID, vocab.UNK_ID]] = True
            assert torch.equal(mask[0, t], want), t
            compared += 1
    assert compared == 20 * 64


def test_training_on_the_term_moves_mass_off_forbidden_tokens():
    """Same seed, same data, 40 steps: with the term the model's mean P(forbidden next token) ends at most 0.8
    of what it ends at without (measured: 0.116 vs 0.179 at weight 1.0, a ratio of 0.65). Mutation: the term left out of the
    loss (metric still computed) -> both runs end equal, the test fails."""
    windows = [w[:64] for w in _windows(0, 64) if len(w) >= 64][:8]
    ids = torch.as_tensor(np.stack(windows))
    mask = torch.ones_like(ids, dtype=torch.bool)
    ends = []
    for weight in (0.0, 1.0):
        torch.manual_seed(0)
        model = MusicTransformerVAEGAN(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=128,
                                                   dropout=0.0, grammar_unlikelihood=weight))
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        for _ in range(40):
            out = model(ids, mask)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
        with torch.no_grad():
            logits = model(ids, mask, return_logits=True).logits
            ends.append(float(unlikelihood(logits, ids[:, :-1], mask[:, 1:])[1]))
    print("illegal mass without / with the term:", ends)
    assert ends[1] <= 0.8 * ends[0], ends



def test_the_term_and_its_metric_average_over_the_scored_positions_only():
    """unlikelihood() averages -log(1 - P_illegal) and P_illegal over the positions target_mask scores: positions
    it leaves out (a state prefix, PAD) count for nothing, however much illegal mass they carry. Here the 5
    unscored positions put all but ~e^-20 of their mass on PAD (illegal everywhere), the 7 scored ones are
    uniform; both figures equal the means over the 7 (measured difference <= 7.5e-9; assert_close at float32)."""
    inputs = torch.as_tensor(_windows(0)[0][:12])[None]
    target_mask = torch.ones(1, 12, dtype=torch.bool)
    target_mask[0, [0, 1, 2, 7, 11]] = False
    logits = torch.zeros(1, 12, vocab.VOCAB_SIZE)
    logits[~target_mask, vocab.PAD_ID] = 20.0
    term, mass = unlikelihood(logits, inputs, target_mask)
    log_p = illegal_log_mass(logits, illegal_mask(inputs))[0]
    scored = target_mask[0]
    assert int(scored.sum()) == 7
    per_position = -torch.log(-torch.expm1(log_p))
    torch.testing.assert_close(term, per_position[scored].mean())
    torch.testing.assert_close(mass, log_p.exp()[scored].mean())
    assert float(per_position[~scored].min()) > 10 * float(term)  # the unscored ones would move both


def test_a_model_certain_of_a_forbidden_token_gets_a_large_finite_term():
    """All the mass on PAD (forbidden everywhere): P_illegal rounds to 1 in float32, and -log(1 - P) would be inf
    (a NaN gradient); log P is kept at most -1e-6 below 0, so the term is -log(1e-6) ~ 13.8 nats, finite."""
    inputs = torch.as_tensor(_windows(0)[0][:8])[None]
    logits = torch.zeros(1, 8, vocab.VOCAB_SIZE)
    logits[..., vocab.PAD_ID] = 200.0
    logits.requires_grad_(True)
    term, mass = unlikelihood(logits, inputs, torch.ones(1, 8, dtype=torch.bool))
    assert float(mass) == 1.0 and torch.isfinite(term) and abs(float(term.detach()) - 13.8155) < 1e-2
    term.backward()
    assert torch.isfinite(logits.grad).all()
