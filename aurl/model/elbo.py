"""The validation figures of every mode, from sums that add up over batches and ranks.

One function (validation_sums, the model's phase="validate") computes them for the trainer's validation
and for aurl.evaluate, so the number that picks best.pt is the number the evaluation reports:
- transformer: the exact NLL per token.
- vae / vae_gan: the negative ELBO per token, (sum over windows of CE(x | z) + KL(q(z|x) || N(0, I))) /
  target tokens, z = mu + sigma * eps: one posterior sample per window. The reconstruction given z = mu alone
  would be lower than any true NLL (z has seen the window), so it never selects a model.
- the latent: KL per token, active units (dims whose posterior mean varies over windows by more than
  model.active_unit_threshold, Burda et al.'s definition) and the z-swap gap: NLL per token of a window given
  another window's z minus given its own z (positive = z carries information about its window).
- vae_gan: the discriminator's accuracy on real windows and on fakes (sampled from the decoder's
  teacher-forced next-token distributions, as in training).

The noise (eps, and the fakes' Gumbel noise) is a pure function of (seed, the window's tokens): the figures
do not depend on batch size, batch order, padding or the number of processes, and validation never draws
from the global RNG (a resumed run's dropout stream stays the same).
"""

from __future__ import annotations

import math
import zlib

import torch
import torch.nn.functional as F

from aurl.vocab import PAD_ID


def window_generators(input_ids: torch.Tensor, real: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One CPU generator per window, seeded by the CRC-32 of (seed, its real tokens). 32 bits, because the
    CPU generator (mt19937) keeps only the low 32 bits of a seed: seed and tokens go through one hash."""
    ids, real = input_ids.detach().cpu(), real.detach().cpu()
    salt = zlib.crc32(int(seed).to_bytes(8, "little", signed=True))
    return [torch.Generator().manual_seed(zlib.crc32(ids[i][real[i]].numpy(), salt)) for i in range(ids.shape[0])]


def _draw(gens: list[torch.Generator], shape: tuple[int, ...], device, uniform: bool = False) -> torch.Tensor:
    draw = torch.rand if uniform else torch.randn
    return torch.stack([draw(shape, generator=g) for g in gens]).to(device)


def sum_shapes(cfg) -> dict[str, tuple[int, ...]]:
    """The keys and shapes validation_sums returns for a model config (a rank without batches adds zeros)."""
    shapes = {"ce": (), "tokens": (), "windows": ()}
    if cfg.is_vae:
        shapes |= {"kl": (), "mu": (cfg.latent_dim,), "mu_sq": (cfg.latent_dim,), "swap_delta": (),
                   "swap_tokens": ()}
    if cfg.is_gan:
        shapes |= {"d_real_correct": (), "d_fake_correct": ()}
    return shapes


def _window_ce(model, inp: torch.Tensor, tgt: torch.Tensor, tgt_mask: torch.Tensor, z,
               sounding: torch.Tensor | None = None) -> torch.Tensor:
    logits = model.decode(inp, z, sounding=sounding)
    ce = F.cross_entropy(logits.float().transpose(1, 2), tgt, reduction="none")
    return (ce * tgt_mask).sum(1), logits


@torch.no_grad()
def validation_sums(model, input_ids: torch.Tensor, loss_mask: torch.Tensor, seed: int,
                    sounding: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Sums over one batch of windows (float64): add them up over batches and ranks, then figures().
    sounding [B, 88]: the pitches sounding before each window (model.sounding_embedding; None = none)."""
    cfg = model.cfg
    real = input_ids != PAD_ID
    inp, tgt = input_ids[:, :-1], input_ids[:, 1:]
    tgt_mask = loss_mask.bool()[:, 1:] & real[:, 1:]
    n_win = input_ids.shape[0]
    sums = {"tokens": tgt_mask.sum(), "windows": torch.tensor(n_win)}
    if not cfg.is_vae:
        sums["ce"] = _window_ce(model, inp, tgt, tgt_mask, None, sounding)[0].sum()
        return {k: v.double() for k, v in sums.items()}
    gens = window_generators(input_ids, real, seed)
    mu, logvar = model.encode(input_ids, real, sounding)
    z = mu + _draw(gens, (cfg.latent_dim,), mu.device) * (0.5 * logvar).exp()
    ce, logits = _window_ce(model, inp, tgt, tgt_mask, z, sounding)
    sums |= {"ce": ce.sum(), "kl": (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(),
             "mu": mu.sum(0), "mu_sq": mu.pow(2).sum(0)}
    if n_win > 1:  # each window given its neighbour's z (a batch of one has no other window: no term)
        swapped, _ = _window_ce(model, inp, tgt, tgt_mask, z.roll(1, 0), sounding)
        sums |= {"swap_delta": (swapped - ce).sum(), "swap_tokens": tgt_mask.sum()}
    else:
        sums |= {"swap_delta": torch.zeros(()), "swap_tokens": torch.zeros(())}
    if cfg.is_gan:
        # a fake = a sample of each teacher-forced next-token distribution (Gumbel-max), as D sees in training
        gumbel = -torch.log(-torch.log(_draw(gens, tuple(logits.shape[1:]), logits.device, True).clamp_min(1e-20)))
        sampled = (logits.float() + gumbel).argmax(-1)
        fake = torch.cat([input_ids[:, :1], torch.where(tgt_mask, sampled, tgt)], dim=1)
        sums |= {"d_real_correct": (model.disc(input_ids, real) > 0).sum(),
                 "d_fake_correct": (model.disc(fake, real) < 0).sum()}
    return {k: v.detach().double() for k, v in sums.items()}


def figures(sums: dict[str, torch.Tensor], active_threshold: float) -> dict[str, float]:
    """Per-token figures from summed validation_sums. "loss" is the model-selection number: nelbo (vae
    modes) or nll (transformer)."""
    tokens = max(float(sums["tokens"]), 1.0)
    out = {"recon": float(sums["ce"]) / tokens, "tokens": float(sums["tokens"]), "windows": float(sums["windows"])}
    if "kl" not in sums:
        out["nll"] = out["loss"] = out["recon"]
        return out
    n = max(float(sums["windows"]), 1.0)
    mu_var = sums["mu_sq"] / n - (sums["mu"] / n).pow(2)
    swap_tokens = float(sums["swap_tokens"])
    out |= {
        "kl": float(sums["kl"]) / tokens,
        "nelbo": (float(sums["ce"]) + float(sums["kl"])) / tokens,
        "active_units": int((mu_var > active_threshold).sum()),
        "latent_dim": int(mu_var.numel()),
        "zswap_gap": float(sums["swap_delta"]) / swap_tokens if swap_tokens else math.nan,
    }
    out["loss"] = out["nelbo"]
    if "d_real_correct" in sums:
        out["d/acc_real"] = float(sums["d_real_correct"]) / n
        out["d/acc_fake"] = float(sums["d_fake_correct"]) / n
    return out


def format_latent(figs: dict[str, float]) -> str:
    """One line of the latent and discriminator figures (vae modes)."""
    line = (f"nelbo {figs['nelbo']:.4f} = recon {figs['recon']:.4f} + KL {figs['kl']:.4f} nats/token; "
            f"active units {figs['active_units']}/{figs['latent_dim']}; z-swap gap {figs['zswap_gap']:+.4f}")
    if "d/acc_real" in figs:
        line += f"; D accuracy real {figs['d/acc_real']:.2f} fake {figs['d/acc_fake']:.2f}"
    return line
