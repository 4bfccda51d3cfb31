"""Sampling from the decoder, with or without a KV cache (same tokens either way at a fixed seed).

Context window: a model sees at most ``context`` tokens (the window it was trained on, data.seq_len, which
the model file records; by default the model's max_seq_len). When a sequence fills it, the oldest quarter
drops out: the context restarts from the newest ``context - context // 4`` tokens and the KV cache is
refilled from them in one pass, so the model always sees between 3/4 and all of its window. Why not slide
the cache one token at a time: RoPE keeps the offsets right, but from the second layer on each cached entry
was computed attending to tokens that have since left the window, so the model would in effect see more
than its window, and the cached and uncached paths would differ. Both paths restart at the same tokens, so
they give the same tokens at a fixed seed; while a sequence fits, nothing restarts.

PAD, START and UNK are never sampled; END only when ``stop_at_end`` (a row that ends is padded with PAD).
Every sequence decodes to a valid Score: aurl.codec.decode closes hanging notes and skips special tokens.

Grammar-constrained decoding (``grammar=True``, the default): before each draw, the tokens that would break
the event grammar of the row so far get no probability: a NOTE_ON of a pitch already sounding on the
instrument in force, a NOTE_OFF of a pitch not sounding on it, and END while a note still sounds (the note
scope is (instrument, pitch), aurl.vocab; the rules are aurl.grammar.Walker's, kept here as tensors). The
model's own distribution is renormalised over the legal tokens, so a sample is grammatical by construction
(only notes still open when the length budget cuts a row off remain open; aurl.model.sampling.finalize
closes those). ``grammar=False`` samples the raw
distribution, which is how aurl.evaluate measures how much the model itself has learned the grammar.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aurl.console import UserError
from aurl.model.sounding import GrammarState, family_after, forbidden_next, scoped_states, sounding_states
from aurl.model.stepper import Stepper, exp_noise, filter_logits
from aurl.vocab import (
    END_ID,
    NOTE_OFF_OFFSET,
    NOTE_ON_OFFSET,
    NUM_PITCHES,
    PAD_ID,
    START_ID,
    UNK_ID,
)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
                generator: torch.Generator | None) -> torch.Tensor:
    """One token per row [B]; temperature 0 = greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, *, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, generator: torch.Generator | None = None, z: torch.Tensor | None = None,
             use_cache: bool = True, stop_at_end: bool = False, grammar: bool = True,
             context: int | None = None, compile: bool = False) -> torch.Tensor:
    """prompt [B, T0] (T0 >= 1, e.g. START) -> [B, T0 + max_new_tokens] tokens.

    In vae modes z [B, latent_dim] conditions the decoder (None = a prior sample drawn from `generator`).
    grammar: constrain each draw to the tokens that keep the row grammatical (see the module docstring).
    context: the most tokens the model sees at once (None = max_seq_len); see the module docstring.
    compile: torch.compile the one-token step (aurl.model.stepper; with the cache only): the same tokens,
    several times faster per token at batch 1, after a one-off compilation (seconds to minutes on CPU).
    """
    cfg = model.cfg
    was_training = model.training
    model.eval()
    device = model.tok_emb.weight.device
    prompt = prompt.to(device=device, dtype=torch.long)
    B, T0 = prompt.shape
    assert T0 >= 1, "the prompt needs at least one token (START)"
    if cfg.is_vae and z is None:
        z = sample_prior(model, B, generator)
    # the whole output, allocated once: each step writes one column (no growing copy of the sequence)
    seq = torch.full((B, T0 + max_new_tokens), PAD_ID, dtype=torch.long, device=device)
    seq[:, :T0] = prompt
    n = T0  # tokens so far
    L = min(int(context or cfg.max_seq_len), cfg.max_seq_len)
    keep = L - max(1, L // 4)
    win = 0 if n <= L else n - keep  # the context is seq[:, win:n]
    cache = model.new_cache(B, L) if use_cache else None
    # the pitches sounding before the context window (model.sounding_embedding: a window that slides past a
    # NOTE_ON still sees the note sounding); the cache carries the state on from there
    before = _sounding(seq[:, :win])
    logits = model.decode(seq[:, win:n], z, cache, sounding=before)[:, -1].clone()
    finished = torch.zeros(B, dtype=torch.bool, device=device)
    step = Stepper(model, z, GrammarMask(prompt, grammar, stop_at_end), finished, temperature, top_k, top_p,
                   compile=compile and use_cache)
    for _ in range(max_new_tokens):
        noise = exp_noise(B, logits.shape[-1], generator, device) if temperature > 0 else None
        restart = n + 1 - win > L  # the window is full after this token: the oldest quarter drops out
        if use_cache and not restart:
            tok, logits = step.step(logits, noise, cache)
        else:
            tok = step.pick(logits, noise)
        seq[:, n] = tok
        n += 1
        if stop_at_end and bool(finished.all()):
            break
        if restart:
            win = n - keep
            before = _sounding(seq[:, :win])
            if use_cache:
                cache = model.new_cache(B, L)
                logits = model.decode(seq[:, win:n], z, cache, sounding=before)[:, -1].clone()
        if not use_cache:
            logits = model.decode(seq[:, win:n], z, sounding=before)[:, -1]
    model.train(was_training)
    return seq


def context_note(context: int, max_seq_len: int) -> str:
    """The one log line generation and evaluation print about the context they feed the model."""
    return (f"context: at most {context} tokens at once (the window the model was trained on; max_seq_len "
            f"{max_seq_len}); beyond it the context slides: the oldest quarter drops out, the KV cache is refilled")


# ----------------------------------------------------------------------------------------------------------
# Grammar constraint: the sampler's one seam (GrammarMask), then the rules it calls
class GrammarMask:
    """The tokens each row may draw next. The sampler calls only apply(logits) before a draw and update(tok)
    after it; the rules live in _grammar_state / _track / _mask_ungrammatical below.

    Per batch row, the state (tensors) is computed once from the prompt and then updated in place with each
    drawn token: constant work per token however long the row, and no tensor read back to Python. With
    grammar off only the special tokens are banned (PAD, START, UNK always; END unless stop_at_end).
    """

    def __init__(self, prompt: torch.Tensor, grammar: bool, stop_at_end: bool):
        banned = [PAD_ID, START_ID, UNK_ID] + ([] if stop_at_end else [END_ID])
        self.banned = torch.tensor(banned, dtype=torch.long, device=prompt.device)
        # its own storage (not a view of the prompt's states): updated in place, and a compiled step's
        # guards then do not depend on the prompt's length
        self.state = tuple(t.clone(memory_format=torch.contiguous_format) for t in _grammar_state(prompt)) \
            if grammar else None

    def apply(self, logits: torch.Tensor) -> None:
        """-inf (in place) on every token the rows may not draw next."""
        logits.index_fill_(1, self.banned, float("-inf"))
        if self.state is not None:
            _mask_ungrammatical(logits, self.state)

    def update(self, tok: torch.Tensor) -> None:
        """Advance each row's state by its drawn token [B] (PAD, after a row's END, changes nothing)."""
        if self.state is not None:
            _track(self.state, tok)


# Grammar constraint: the notes sounding in each row, the instrument in force, and the tokens illegal given them.
# The state is aurl.grammar.Walker's as tensors (tests/test_grammar.py feeds both the same tokens):
# GrammarState = (sounding [B, 17, 88] bool: (instrument, pitch) sounding, family [B] long: instrument in force),
# computed over a whole row by aurl.model.sounding.scoped_states and advanced here one token at a time.


def _note_column(tok: torch.Tensor, family: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(is NOTE_ON, is NOTE_OFF, column family * 88 + pitch index in the flat [B, 17 * 88] state)."""
    on = (tok >= NOTE_ON_OFFSET) & (tok < NOTE_ON_OFFSET + NUM_PITCHES)
    off = (tok >= NOTE_OFF_OFFSET) & (tok < NOTE_OFF_OFFSET + NUM_PITCHES)
    pitch = torch.where(on, tok - NOTE_ON_OFFSET, tok - NOTE_OFF_OFFSET).clamp(0, NUM_PITCHES - 1)
    return on, off, family * NUM_PITCHES + pitch


def _track(state: GrammarState, tok: torch.Tensor) -> None:
    """Update the grammar state (in place) with one token per row [B]: the walker's rules (a NOTE_ON keeps its
    note sounding, a NOTE_OFF silences it, an instrument token changes the instrument in force)."""
    sounding, family = state
    # gather/scatter on one column per row (no boolean indexing: no data-dependent shapes, no device sync)
    family.copy_(family_after(tok, family))
    on, off, col = _note_column(tok, family)
    flat = sounding.view(sounding.shape[0], -1)
    col = col[:, None]
    flat.scatter_(1, col, (flat.gather(1, col) | on[:, None]) & ~off[:, None])


def _grammar_state(seq: torch.Tensor) -> GrammarState:
    """The grammar state at the end of each row (the state _track reaches token by token)."""
    return scoped_states(seq.long())[2]


def _sounding(seq: torch.Tensor) -> torch.Tensor:
    """The pitches sounding at the end of each row [B, 88], as the model's sounding-notes feature sees them
    (aurl.model.sounding: any instrument; the latest NOTE_ON / NOTE_OFF of a pitch decides)."""
    if seq.shape[1] == 0:
        return torch.zeros(seq.shape[0], NUM_PITCHES, dtype=torch.bool, device=seq.device)
    return sounding_states(seq)[:, -1]


def _mask_ungrammatical(logits: torch.Tensor, state: GrammarState) -> None:
    """-inf (in place) on NOTE_ON of a pitch sounding on the instrument in force, NOTE_OFF of a pitch silent
    on it, and END while any note sounds."""
    sounding, family = state
    here = sounding.gather(1, family.view(-1, 1, 1).expand(-1, 1, NUM_PITCHES)).squeeze(1)  # [B, 88]
    logits.masked_fill_(forbidden_next(here, sounding.flatten(1).any(-1)), float("-inf"))


# ----------------------------------------------------------------------------------------------------------
# Latents (vae modes)
def sample_prior(model, n: int, generator: torch.Generator | None = None, scale: float = 1.0) -> torch.Tensor:
    device = model.tok_emb.weight.device
    z = torch.randn(n, model.cfg.latent_dim, generator=generator, device=generator.device if generator else None)
    return (scale * z).to(device)


@torch.no_grad()
def encode_posterior(model, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, logvar) of pieces tokens [B, T] (PAD-padded; only the first max_seq_len tokens are read)."""
    was_training = model.training
    model.eval()
    tokens = tokens[:, : model.cfg.max_seq_len].to(model.tok_emb.weight.device)
    mu, logvar = model.encode(tokens, tokens != PAD_ID)
    model.train(was_training)
    return mu, logvar


def sample_posterior(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None,
                     scale: float = 1.0) -> torch.Tensor:
    eps = torch.randn(mu.shape, generator=generator, device=generator.device if generator else None)
    return mu + scale * eps.to(mu.device) * (0.5 * logvar).exp()


def interpolate(z_a: torch.Tensor, z_b: torch.Tensor, steps: int, method: str = "slerp") -> torch.Tensor:
    """[steps, latent_dim] from z_a to z_b (both ends included). slerp keeps the norm typical of the prior."""
    assert steps >= 2 and method in ("slerp", "lerp")
    t = torch.linspace(0, 1, steps, device=z_a.device, dtype=z_a.dtype)[:, None]
    a, b = z_a.reshape(1, -1), z_b.reshape(1, -1)
    if method == "lerp":
        return (1 - t) * a + t * b
    cos = (F.normalize(a, dim=-1) * F.normalize(b, dim=-1)).sum().clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if omega.abs() < 1e-4 or math.isclose(float(omega), math.pi, abs_tol=1e-4):
        return (1 - t) * a + t * b
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


# ----------------------------------------------------------------------------------------------------------
# Well-formed output
def finalize(tokens) -> list[int]:
    """A grammatical piece with the same notes as aurl.codec.decode(tokens): START, the events up to the first
    END, each NOTE_ON closed (hanging notes closed at the end), no special token inside, then END.

    The walker's rules (aurl.grammar.Walker, decode's): a NOTE_OFF of a silent (instrument, pitch) is dropped,
    a repeated NOTE_ON of a sounding one at the same step is dropped and at a later step is preceded by its
    NOTE_OFF; the notes still open at the end are closed by instrument and pitch.
    """
    from aurl.grammar import Walker

    toks = [int(t) for t in tokens]
    if toks and toks[0] == START_ID:
        toks = toks[1:]
    if END_ID in toks:
        toks = toks[: toks.index(END_ID)]
    out = [START_ID]
    walker = Walker()
    for t in toks:
        what = walker.feed(t)
        if what in ("special", "out_of_vocab", "on_dup", "off_silent"):
            continue
        if what == "on_again":
            out.append(t - NOTE_ON_OFFSET + NOTE_OFF_OFFSET)
        out.append(t)
    return out + walker.close_all() + [END_ID]


def check_sampling_options(temperature: float, top_k: int, top_p: float,
                           names: tuple[str, str, str] = ("--temperature", "--top-k", "--top-p")) -> None:
    """Refuse sampling options that generate() cannot honour, naming them as the user wrote them (`names`:
    the CLI flags by default, the config keys for a stage's eval section): every sampling CLI and the config."""
    if temperature < 0:
        raise UserError(f"{names[0]} must be >= 0, got {temperature}")
    if top_k < 0:
        raise UserError(f"{names[1]} must be >= 0 (0 = off), got {top_k}")
    if not 0 < top_p <= 1:
        raise UserError(f"{names[2]} must be in (0, 1], got {top_p}")
