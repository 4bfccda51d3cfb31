"""MusicTransformerVAEGAN: one architecture, three modes (transformer, vae, vae_gan).

- transformer: a causal decoder LM (token embedding, RoPE attention, pre-norm blocks, tied output head),
  trained on next-token targets: logits from input_ids[:, :-1] predict input_ids[:, 1:], masked by
  loss_mask[:, 1:] (PAD is never a target).
- vae: a bidirectional encoder pools the window into q(z|x) = N(mu, exp(logvar)); the SAME causal decoder
  is conditioned on z through a learned bias added to every input embedding. The decoder's prediction at t
  sees only tokens <= t and z, never the targets (the causal mask is unchanged). The bias projection starts
  at zero, so a transformer checkpoint loaded into a vae decoder computes exactly what it did before.
  Loss = (sum CE + beta * sum_d max(KL_d, free_bits)) / tokens, with beta warmed up over steps.
- vae_gan: + a discriminator over (soft) one-hot token sequences with its own parameters (and optimizer in
  the trainer). The generator's fakes are straight-through Gumbel-softmax samples of its teacher-forced
  next-token distributions: one-hot in the forward pass, softmax gradient in the backward pass, so the
  adversarial loss reaches every generator weight. D's weights are detached in the generator phase (its
  grads stay untouched); in the discriminator phase the fakes are made without grad.
- every mode, with model.sounding_embedding: the pitches sounding after each token (aurl.model.sounding,
  exact from the tokens) are projected and added to its embedding, in the decoder and the encoder; a KV
  cache carries that state on, so incremental decoding sees what the full forward sees.
- every mode, with model.sounding_output_bias: the same state shifts the decoder's NOTE_ON / NOTE_OFF logits
  by two learned scalars (aurl.model.sounding_bias), in every place logits are made: decode() (sampling, the
  KV-cached step, validation, the fakes, the grammar term) and the chunked training loss.

No distribution code here: the trainer wraps the model (one forward signature for DDP/DeepSpeed).
With DDP, vae_gan (only) leaves some parameters unused per phase: wrap it with find_unused_parameters=True.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from aurl.model.config import ModelConfig
from aurl.model.elbo import validation_sums
from aurl.model.grammar_loss import unlikelihood
from aurl.model.head_loss import chunked_ce_sum
from aurl.model.layers import KVCache, Stack, init_weights
from aurl.model.sounding import sounding_states
from aurl.model.sounding_bias import sounding_logit_bias
from aurl.vocab import NUM_PITCHES, PAD_ID


class ModelOutput(NamedTuple):
    """loss: the scalar to backpropagate; metrics: named scalar tensors (detached); logits if asked."""

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor]
    logits: torch.Tensor | None = None


def _masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


class Discriminator(nn.Module):
    """Bidirectional transformer over token sequences (ids or soft one-hots [B, T, V]) -> real logit [B]."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.disc_d_model
        self.emb = nn.Embedding(cfg.vocab_size, d)
        self.stack = Stack(d, cfg.disc_layers, cfg.disc_heads, 4 * d, cfg.dropout, False, cfg.rope_base,
                           cfg.max_seq_len)
        self.head = nn.Linear(d, 1)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        w = self.emb.weight
        # soft one-hots: the same rows as a lookup; kept in the weights' dtype (autocast would give bf16) so
        # the residual stream has the decoder's precision
        x = self.emb(seq) if seq.dtype == torch.long else (seq.to(w.dtype) @ w).to(w.dtype)
        return self.head(_masked_mean(self.stack(x, pad_mask=mask), mask)).squeeze(-1)


class MusicTransformerVAEGAN(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg.validate()
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.decoder = Stack(d, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.dropout, True, cfg.rope_base,
                             cfg.max_seq_len)
        init_weights(self.decoder, cfg.n_layers)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        # the pitches sounding after each token, added to its embedding (aurl.model.sounding); zero at first,
        # so a model without it transfers into one with it unchanged, and it still gets gradients
        self.sound_proj = None
        if cfg.sounding_embedding:
            self.sound_proj = nn.Linear(NUM_PITCHES, d, bias=False)
            nn.init.zeros_(self.sound_proj.weight)
        # the same state shifts the note-event logits (aurl.model.sounding_bias); zero at first, for the same reason
        self.sound_bias = nn.Parameter(torch.zeros(2)) if cfg.sounding_output_bias else None
        if cfg.is_vae:
            self.encoder = Stack(d, cfg.encoder_layers, cfg.n_heads, cfg.d_ff, cfg.dropout, False, cfg.rope_base,
                                 cfg.max_seq_len)
            init_weights(self.encoder, cfg.encoder_layers)
            self.to_mu = nn.Linear(d, cfg.latent_dim)
            self.to_logvar = nn.Linear(d, cfg.latent_dim)
            self.latent_proj = nn.Linear(cfg.latent_dim, d, bias=False)
            for lin in (self.to_mu, self.to_logvar):
                nn.init.normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
            nn.init.zeros_(self.latent_proj.weight)  # z starts as a no-op: transfer keeps the decoder's function
            # BN-VAE (see ModelConfig.mu_bn_gamma): mu standardized over the batch, then scaled by gamma
            # eps far below BN's default 1e-5: a fresh encoder's mu varies over windows by ~1e-4 or less
            self.mu_bn = nn.BatchNorm1d(cfg.latent_dim, eps=1e-8, affine=False) if cfg.mu_bn_gamma > 0 else None
        if cfg.is_gan:
            self.disc = Discriminator(cfg)
            init_weights(self.disc, cfg.disc_layers)
        self.chunked_loss = False  # see set_activation_checkpointing

    def set_activation_checkpointing(self, on: bool) -> None:
        """train.activation_checkpointing: the decoder's and the encoder's blocks are recomputed in the backward
        pass, and the training loss never holds the whole logits (aurl.model.head_loss). Not the
        discriminator's: the generator phase calls it with detached weights (functional_call), which a
        recomputation in the backward pass would not see (it would recompute with, and reach, D's own)."""
        for stack in (self.decoder, getattr(self, "encoder", None)):
            if stack is not None:
                stack.checkpointing = on
        self.chunked_loss = on

    # ------------------------------------------------------------------------------------------------------
    # Parameters
    def discriminator_parameters(self) -> list[nn.Parameter]:
        return list(self.disc.parameters()) if self.cfg.is_gan else []

    def generator_parameters(self) -> list[nn.Parameter]:
        d_ids = {id(p) for p in self.discriminator_parameters()}
        return [p for p in self.parameters() if id(p) not in d_ids]

    def num_parameters(self, part: str = "all") -> int:
        """Parameter count of "all", "generator" or "discriminator" (the tied head counts once)."""
        params = {"all": self.parameters, "generator": self.generator_parameters,
                  "discriminator": self.discriminator_parameters}[part]()
        return sum(p.numel() for p in params)

    # ------------------------------------------------------------------------------------------------------
    # Pieces (used by forward, the sampler and the tests)
    def encode(self, input_ids: torch.Tensor, loss_mask: torch.Tensor,
               sounding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z|x): (mu, logvar) [B, latent_dim], in float32. The encoder sees the whole window.
        sounding: the pitches sounding before the window (see sounding_feature)."""
        assert self.cfg.is_vae, "encode() needs a vae mode"
        h = _masked_mean(self.encoder(self.embed(input_ids, sounding), pad_mask=loss_mask), loss_mask)
        mu = self.to_mu(h).float()
        if self.mu_bn is not None:
            # batch statistics in training (running ones for a batch of one), running statistics in eval: a
            # window's mu then depends on nothing else in its batch
            batch_stats = self.training and mu.shape[0] > 1
            bn = self.mu_bn
            if batch_stats:
                # start the running statistics at the first batch's, not at (0, 1): a fresh encoder's spread
                # is ~1e-4, eval mu would be ~0 (torch.where, not an if on the count: no graph break compiled)
                with torch.no_grad():
                    first = bn.num_batches_tracked == 0
                    bn.running_mean.copy_(torch.where(first, mu.mean(0), bn.running_mean))
                    bn.running_var.copy_(torch.where(first, mu.var(0), bn.running_var))
                bn.num_batches_tracked.add_(1)
            mu = F.batch_norm(mu, self.mu_bn.running_mean, self.mu_bn.running_var, training=batch_stats,
                              momentum=self.mu_bn.momentum, eps=self.mu_bn.eps) * self.cfg.mu_bn_gamma
        return mu, self.to_logvar(h).float().clamp(-12.0, 8.0)

    @torch.no_grad()
    def latent_stats(self, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-dimension posterior figures of a batch, for histograms: KL (nats, batch mean) and the batch
        variance of mu (a dim with variance above active_unit_threshold is an active unit)."""
        mu, logvar = self.encode(input_ids, loss_mask.bool())
        return {"kl_per_dim": (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).mean(0),
                "mu_var_per_dim": mu.var(0, unbiased=False)}

    def sounding_after(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                       sounding: torch.Tensor | None = None) -> torch.Tensor | None:
        """The pitches sounding after each token [B, T, 88] bool (None when neither model.sounding_embedding
        nor model.sounding_output_bias needs them).

        sounding [B, 88] bool: the pitches sounding before input_ids[:, 0]. None = the state `cache` has
        reached (the pitches sounding after its last token), or nothing sounding without a cache. A cache
        keeps the state after this chunk, so incremental decoding sees exactly the full forward's state.
        """
        if self.sound_proj is None and self.sound_bias is None:
            return None
        before = sounding if sounding is not None or cache is None else cache.sounding
        states = sounding_states(input_ids, before)
        if cache is not None:  # in place: the cache's tensors keep their storage (a compiled step's inputs)
            cache.sounding.copy_(states[:, -1])
        return states

    def _project_sounding(self, states: torch.Tensor | None) -> torch.Tensor | None:
        if self.sound_proj is None:
            return None
        w = self.sound_proj.weight
        return self.sound_proj(states.to(w.dtype))

    def sounding_feature(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                         sounding: torch.Tensor | None = None) -> torch.Tensor | None:
        """The sounding-notes feature [B, T, d] added to the token embeddings (None when
        model.sounding_embedding is off): the projection of the pitches sounding after each token
        (cache, sounding: see sounding_after)."""
        if self.sound_proj is None:
            return None
        return self._project_sounding(self.sounding_after(input_ids, cache, sounding))

    def embed(self, input_ids: torch.Tensor, sounding: torch.Tensor | None = None) -> torch.Tensor:
        """What the encoder reads: token embeddings (+ the sounding-notes feature)."""
        x = self.tok_emb(input_ids)
        feature = self.sounding_feature(input_ids, sounding=sounding)
        return x if feature is None else x + feature.to(x.dtype)

    def decode(self, input_ids: torch.Tensor, z: torch.Tensor | None = None,
               cache: KVCache | None = None, word_dropout: float = 0.0,
               sounding: torch.Tensor | None = None) -> torch.Tensor:
        """Causal decoder logits [B, T, V] for input_ids (continuing `cache` if given), conditioned on z.
        word_dropout: share of input tokens whose embedding is zeroed (training only, see model.word_dropout);
        it zeroes the token embedding only: the sounding-notes feature stays (it is state, not content).
        sounding: the pitches sounding before input_ids[:, 0] (see sounding_after)."""
        return self.head(*self.decode_hidden(input_ids, z, cache, word_dropout, sounding))

    def decode_hidden(self, input_ids: torch.Tensor, z: torch.Tensor | None = None,
                      cache: KVCache | None = None, word_dropout: float = 0.0,
                      sounding: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """decode() before the output head: the decoder's final hidden states [B, T, d_model], and the
        pitches sounding after each token [B, T, 88] that the head's output bias reads (None without)."""
        x = self.tok_emb(input_ids)
        if word_dropout > 0:
            x = x * (torch.rand(x.shape[:2], device=x.device) >= word_dropout).unsqueeze(-1).to(x.dtype)
        states = self.sounding_after(input_ids, cache, sounding)
        feature = self._project_sounding(states)
        if feature is not None:
            x = x + feature.to(x.dtype)
        if z is not None:
            x = x + self.latent_proj(z.to(x.dtype)).unsqueeze(1)
        return self.decoder(x, cache), states

    def head(self, hidden: torch.Tensor, states: torch.Tensor | None = None) -> torch.Tensor:
        """Logits [..., V] from hidden states [..., d_model]: the tied output head, plus the sounding-notes
        output bias (model.sounding_output_bias) from the pitches sounding there [..., 88]. The one place
        logits are made (decode() and the chunked loss both call it)."""
        logits = F.linear(hidden, self.tok_emb.weight)
        if self.sound_bias is None:
            return logits
        return logits + sounding_logit_bias(states, self.sound_bias, logits.dtype)

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = self.tok_emb.weight
        cache = KVCache(self.cfg.n_layers, batch, self.cfg.n_heads, max_len or self.cfg.max_seq_len,
                        self.cfg.head_dim, p.device, p.dtype)
        cache.sounding = torch.zeros(batch, NUM_PITCHES, dtype=torch.bool, device=p.device)
        cache.qkv = [block.attn.stacked_qkv() for block in self.decoder.blocks]
        return cache

    def kl_beta(self, step: int) -> float:
        c = self.cfg
        return c.kl_beta_max * (min(1.0, step / c.kl_warmup_steps) if c.kl_warmup_steps > 0 else 1.0)

    def adv_weight(self, step: int) -> float:
        c = self.cfg
        if step < c.adv_start_step:
            return 0.0
        ramp = min(1.0, (step - c.adv_start_step) / c.adv_warmup_steps) if c.adv_warmup_steps > 0 else 1.0
        return c.adv_weight_max * ramp

    def _fakes(self, logits: torch.Tensor, input_ids: torch.Tensor, tgt_mask: torch.Tensor) -> torch.Tensor:
        """One-hot sequence: the real first token, then Gumbel samples of the next-token distributions where
        there is a target (real tokens elsewhere, so padding tells D nothing). Straight-through when logits
        carry grad."""
        y = F.gumbel_softmax(logits.float(), tau=self.cfg.gumbel_tau, hard=True)
        real = F.one_hot(input_ids, self.cfg.vocab_size).to(y.dtype)
        tail = torch.where(tgt_mask.unsqueeze(-1), y, real[:, 1:])
        return torch.cat([real[:, :1], tail], dim=1)

    # ------------------------------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, loss_mask: torch.Tensor, step: int = 0,
                phase: str = "generator", return_logits: bool = False, seed: int = 0,
                sounding: torch.Tensor | None = None) -> ModelOutput:
        """input_ids [B, T] long, loss_mask [B, T] bool (True at real tokens). See the module docstring.
        phase="validate": metrics = aurl.model.elbo.validation_sums (summable; `seed` seeds its noise);
        `sounding` [B, 88] there: the pitches sounding before each window (a window cut from inside a piece
        without its state prefix, as aurl.evaluate cuts them; None = none). Training windows carry their
        state as tokens (aurl.grammar), so the training phases take none."""
        cfg = self.cfg
        if phase not in ("generator", "discriminator", "validate"):
            raise ValueError(f"phase must be 'generator', 'discriminator' or 'validate', got {phase!r}")
        if phase == "discriminator" and not cfg.is_gan:
            raise ValueError(f"phase='discriminator' needs mode vae_gan (mode is {cfg.mode})")
        if phase == "validate":  # through forward, so DDP / DeepSpeed wrappers see an ordinary call
            sums = validation_sums(self, input_ids, loss_mask, seed, sounding)
            return ModelOutput(sums["ce"] + sums.get("kl", 0.0), sums)
        step = int(step)
        loss_mask = loss_mask.bool()
        real = input_ids != PAD_ID  # what the encoder and D read: every token of the window, never PAD
        inp, tgt = input_ids[:, :-1], input_ids[:, 1:]
        tgt_mask = loss_mask[:, 1:] & (tgt != PAD_ID)
        n_tok = tgt_mask.sum().clamp_min(1)
        metrics: dict[str, torch.Tensor] = {}

        z, mu, logvar = self._posterior(input_ids, real, grad=phase != "discriminator")
        if phase == "discriminator":
            return self._discriminator_phase(input_ids, real, inp, z, tgt_mask)

        ce_sum, logits = self._reconstruction(inp, tgt, tgt_mask, z, need_logits=return_logits)
        recon = ce_sum / n_tok
        metrics["recon"] = recon.detach()  # nats per target token
        metrics["tokens"] = n_tok.detach().float()  # targets in this batch: weights for averaging recon
        loss = recon
        if cfg.grammar_unlikelihood > 0:
            ul, illegal_mass = unlikelihood(logits, inp, tgt_mask)
            loss = loss + cfg.grammar_unlikelihood * ul
            metrics["grammar/unlikelihood"] = ul.detach()
            metrics["grammar/illegal_mass"] = illegal_mass  # the model's mean P(a forbidden next token)

        if cfg.is_vae:
            # KL is per window, CE per token: put both on the per-token scale of the ELBO
            loss = loss + self._kl_term(mu, logvar, step, metrics) / (n_tok / input_ids.shape[0])
        if cfg.is_gan:
            loss = loss + self._adversarial_term(logits, input_ids, real, tgt_mask, step, metrics)
        metrics["loss"] = loss.detach()
        return ModelOutput(loss, metrics, logits if return_logits else None)

    def _posterior(self, input_ids, real, grad: bool):
        """-> (z, mu, logvar) of the vae modes, (None, None, None) otherwise. Training samples z
        (reparameterized); evaluation uses the posterior mean (deterministic). grad=False: D's phase."""
        if not self.cfg.is_vae:
            return None, None, None
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            mu, logvar = self.encode(input_ids, real)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return z, mu, logvar

    def _reconstruction(self, inp, tgt, tgt_mask, z, need_logits: bool):
        """-> (summed cross-entropy over the masked targets, the logits or None). In training with
        chunked_loss the logits are never whole (head_loss), unless the fakes or the grammar term need them."""
        cfg = self.cfg
        word_dropout = cfg.word_dropout if cfg.is_vae and self.training else 0.0
        chunked = self.chunked_loss and self.training
        if chunked and not cfg.is_gan and not need_logits and not cfg.grammar_unlikelihood:
            h, states = self.decode_hidden(inp, z, word_dropout=word_dropout)
            return chunked_ce_sum(tgt, tgt_mask, hidden=h, head=self.head, states=states), None
        logits = self.decode(inp, z, word_dropout=word_dropout)
        if chunked:  # vae_gan's fakes need the logits: only the loss's own copies are chunked
            return chunked_ce_sum(tgt, tgt_mask, logits=logits), logits
        ce = F.cross_entropy(logits.float().reshape(-1, cfg.vocab_size), tgt.reshape(-1), reduction="none")
        return (ce * tgt_mask.reshape(-1)).sum(), logits

    def _discriminator_phase(self, input_ids, real, inp, z, tgt_mask) -> ModelOutput:
        """D's loss on real windows and on the generator's fakes (G frozen: no gradient reaches it)."""
        with torch.no_grad():
            fake = self._fakes(self.decode(inp, z), input_ids, tgt_mask)
        d_real = self.disc(input_ids, real)
        d_fake = self.disc(fake, real)
        loss = F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
        metrics = {"d/loss": loss.detach(),
                   "d/real": torch.sigmoid(d_real).mean().detach(),  # D's P(real) on real windows
                   "d/fake": torch.sigmoid(d_fake).mean().detach()}  # D's P(real) on fakes
        acc_real, acc_fake = (d_real > 0).float().mean().detach(), (d_fake < 0).float().mean().detach()
        metrics.update({"d/acc": 0.5 * (acc_real + acc_fake), "d/acc_real": acc_real, "d/acc_fake": acc_fake})
        return ModelOutput(loss, metrics)

    def _kl_term(self, mu, logvar, step: int, metrics: dict) -> torch.Tensor:
        """beta x the free-bits KL of the batch (nats per window); its figures into metrics."""
        cfg = self.cfg
        kl_dim = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).mean(0)  # nats per dim, batch mean
        kl = kl_dim.sum()
        kl_fb = torch.clamp(kl_dim, min=cfg.free_bits).sum()
        beta = self.kl_beta(step)
        active = (mu.var(0, unbiased=False) > cfg.active_unit_threshold).sum() if mu.shape[0] > 1 \
            else torch.zeros((), device=mu.device, dtype=torch.long)
        metrics.update({
            "kl": kl.detach(),
            "kl/beta": torch.tensor(beta, device=kl.device),
            "kl/free_bits_loss": kl_fb.detach(),
            "kl/dim_mean": kl_dim.mean().detach(),
            "kl/dim_min": kl_dim.min().detach(),
            "kl/dim_max": kl_dim.max().detach(),
            "kl/active_units": active.float(),
        })
        return beta * kl_fb

    def _adversarial_term(self, logits, input_ids, real, tgt_mask, step: int, metrics: dict) -> torch.Tensor:
        """The weighted non-saturating generator loss against a frozen D (its gradient reaches G only)."""
        w = self.adv_weight(step)
        fake = self._fakes(logits, input_ids, tgt_mask)
        frozen = {n: p.detach() for n, p in self.disc.named_parameters()}
        d_fake = functional_call(self.disc, frozen, (fake, real))
        g_adv = F.softplus(-d_fake).mean()
        metrics["g/adv"] = g_adv.detach()
        metrics["g/adv_weight"] = torch.tensor(w, device=g_adv.device)
        return w * g_adv

