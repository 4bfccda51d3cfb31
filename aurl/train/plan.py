"""`python -m aurl.train --plan`: what each stage needs per GPU, before booking the GPUs. Builds no data and
trains nothing: the model is built on the meta device (no memory), the cache is only opened (its manifest read)
when it exists, and the ETA comes from the tokens/s a previous run recorded in training_state.json.

Notation: P = generator parameters (decoder + embedding, plus the encoder and latent layers in the vae modes),
Pd = discriminator parameters (stage 3), L = parameters of the generator's largest module (its own parameters,
not its children's: what ZeRO-3 gathers at once; the tied embedding in practice), N = GPUs (--gpus).

Model states, bytes per GPU (weights | gradients | optimizer states):
- DDP (the trainer's torch AdamW; bf16 is autocast, so weights and gradients stay fp32):
  4P | 4P | 8P (AdamW exp_avg + exp_avg_sq in fp32) = 16P.
- DeepSpeed, mixed precision bf16 (DeepSpeed's own accounting, the one its estimators use):
  ZeRO-2:          2P (bf16) | 6P/N (bf16 and fp32 gradient partitions) | 12P/N (fp32 master, exp_avg,
                   exp_avg_sq) = 2P + 18P/N
  ZeRO-3:          2P/N + 2L (shard + the gathered largest module) | 4P/N + 2L (fp32 partition + the largest
                   module's bf16 gradients in flight) | 12P/N = 4L + 18P/N
  ZeRO-3 offload:  2L | 2L | 0 (parameters and optimizer in CPU memory: accelerate_configs/
                   deepspeed_zero3_offload.yaml offloads both) = 4L; host RAM over all nodes: 18P (bf16
                   parameters 2, fp32 gradients 4, master 4, moments 8; DeepSpeed advises 1.5 x that)
- DeepSpeed, fp32 (mixed_precision "no"): no master copy and one gradient copy: ZeRO-2 4P | 4P/N | 8P/N;
  ZeRO-3 4P/N + 4L | 4P/N + 4L | 8P/N; ZeRO-3 offload 4L | 4L | 0, host RAM 16P.
- The discriminator is never inside the DeepSpeed engine (aurl.train.distributed.detach_discriminator): whole on
  every GPU, fp32, with its own torch AdamW: 4Pd | 4Pd | 8Pd under every mode.

Activations of one micro-batch (B windows of T = data.seq_len tokens) in training: what the forward pass saves
for the backward pass plus the transients at the start of the backward pass, in bytes per token:
- each transformer block of width d and feed-forward width f, fp32: 4 x (9d + 2f) (attention norm input and
  output, q k v saved by SDPA, the attention output twice (SDPA's copy and the o-projection's reshaped input),
  MLP norm input and output, GELU input and output); under bf16 autocast: 26d + 4f (the two norm inputs are the
  fp32 residual stream, 8d; each of q, k, v casts the norm output to bf16 on its own, 6d; q k v 6d; the attention
  output twice 4d; the MLP input cast 2d; GELU input and output 4f), plus a per-micro-batch constant: autocast's
  bf16 copies of the block's weights, 2 x (4d^2 + 2df). Both plus 2d one-byte dropout masks when dropout > 0.
  Flash/efficient SDPA keeps no T x T matrix, so nothing grows with T^2.
- the decoder's head over the vocabulary V: 4 x (2d + 4V) (final norm input, head input; the log-softmax output,
  and at the start of the backward pass the gradient of the log-probabilities, log-softmax's exp temporary and
  the gradient of the logits), in fp32 whatever the precision (the loss upcasts the logits).
- vae: the encoder's blocks over the same tokens and its final norm (2d at 4 bytes, 2 under bf16).
- vae_gan generator phase: the straight-through fakes (Gumbel soft sample, hard one-hot, their sum, the
  concatenated sequence and the discriminator's input: 4 x 5V) and the discriminator's blocks at width
  disc_d_model with feed-forward 4 x disc_d_model. (The discriminator phase runs after the generator phase has
  freed its activations and holds less: a no-grad generator forward and the discriminator's blocks.)
Activation memory = B x T x (sum of the above) + the bf16 weight copies. Checked against a measured CPU peak
(tests/test_plan.py) in fp32 and bf16. With train.activation_checkpointing the figure stays the one without it
(an upper bound, said so in the plan): what checkpointing saves is measured by bench/bench_memory.py, not
modelled here.

ETA = total steps x tokens per step / (recorded tokens/s x N / recorded processes): linear scaling in GPUs (an
assumption, optimistic across nodes); the recorded rate counts real tokens and a step counts full windows, so
padding makes the ETA err long.

Per-GPU total = model states + activations of one micro-batch. Verdict: fits when the total is at most 90 % of
--gpu-mem (the rest for the CUDA context, allocator fragmentation and communication buffers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from aurl.config import StageConfig
from aurl.console import UserError
from aurl.model import MusicTransformerVAEGAN
from aurl.model.config import ModelConfig

GiB = 2**30
HEADROOM = 0.9  # fraction of --gpu-mem a plan may fill (see the module docstring)
MODES = ("DDP", "ZeRO-2", "ZeRO-3", "ZeRO-3 offload")
# the model-state formulas of model_states(), per mode, for the printout: (bf16, fp32); + 16Pd for stage 3's D
FORMULAS = {"DDP": ("16P", "16P"), "ZeRO-2": ("2P + 18P/N", "4P + 12P/N"), "ZeRO-3": ("4L + 18P/N", "8L + 16P/N"),
            "ZeRO-3 offload": ("4L", "8L")}


@dataclass(frozen=True)
class ParamCounts:
    generator: int
    encoder: int  # part of generator: encoder stack, to_mu, to_logvar (0 without a vae mode)
    discriminator: int
    largest_module: int  # the generator module with the most own parameters (ZeRO-3 gathers it whole)


@dataclass(frozen=True)
class ModelStates:
    weights: float
    grads: float
    optimizer: float

    @property
    def total(self) -> float:
        return self.weights + self.grads + self.optimizer


def count_parameters(model_cfg: ModelConfig) -> ParamCounts:
    """Exact parameter counts of a model built on the meta device (shapes only, no memory)."""
    with torch.device("meta"):
        model = MusicTransformerVAEGAN(model_cfg)
    gen = model.num_parameters("generator")
    enc = 0
    if model_cfg.is_vae:
        enc = sum(p.numel() for m in (model.encoder, model.to_mu, model.to_logvar) for p in m.parameters())
    disc_ids = {id(p) for p in model.discriminator_parameters()}
    largest = max(sum(p.numel() for p in m.parameters(recurse=False) if id(p) not in disc_ids)
                  for m in model.modules())
    return ParamCounts(gen, enc, model.num_parameters("discriminator"), largest)


def offload_host_bytes(counts: ParamCounts, bf16: bool) -> int:
    """CPU memory over all nodes that ZeRO-3 offload holds for the generator (module docstring)."""
    return (18 if bf16 else 16) * counts.generator


def model_states(counts: ParamCounts, gpus: int, bf16: bool) -> dict[str, ModelStates]:
    """Bytes per GPU of weights, gradients and optimizer states under each mode (formulas: module docstring)."""
    P, L, N = counts.generator, counts.largest_module, gpus
    if bf16:
        gen = {"ZeRO-2": ModelStates(2 * P, 6 * P / N, 12 * P / N),
               "ZeRO-3": ModelStates(2 * P / N + 2 * L, 4 * P / N + 2 * L, 12 * P / N),
               "ZeRO-3 offload": ModelStates(2 * L, 2 * L, 0)}
    else:
        gen = {"ZeRO-2": ModelStates(4 * P, 4 * P / N, 8 * P / N),
               "ZeRO-3": ModelStates(4 * P / N + 4 * L, 4 * P / N + 4 * L, 8 * P / N),
               "ZeRO-3 offload": ModelStates(4 * L, 4 * L, 0)}
    gen = {"DDP": ModelStates(4 * P, 4 * P, 8 * P)} | gen
    Pd = counts.discriminator
    return {mode: ModelStates(s.weights + 4 * Pd, s.grads + 4 * Pd, s.optimizer + 8 * Pd) for mode, s in gen.items()}


def activation_bytes(cfg: StageConfig) -> float:
    """Saved activations of one micro-batch in training (formula: module docstring)."""
    m, T, B = cfg.model, cfg.data.seq_len, cfg.data.batch_size
    bf16 = cfg.train.mixed_precision == "bf16"
    s = 2 if bf16 else 4
    masks = 2 if m.dropout > 0 else 0

    def blocks(d: int, f: int, n: int) -> float:  # bytes per token
        return n * ((26 * d + 4 * f if bf16 else 4 * (9 * d + 2 * f)) + masks * d)

    def weight_copies(d: int, f: int, n: int) -> float:  # autocast's bf16 casts of the block weights
        return n * 2 * (4 * d * d + 2 * d * f) if bf16 else 0

    per_token = blocks(m.d_model, m.d_ff, m.n_layers) + 4 * (2 * m.d_model + 4 * m.vocab_size)
    fixed = weight_copies(m.d_model, m.d_ff, m.n_layers)
    if m.is_vae:
        per_token += blocks(m.d_model, m.d_ff, m.encoder_layers) + s * 2 * m.d_model
        fixed += weight_copies(m.d_model, m.d_ff, m.encoder_layers)
    if m.is_gan:
        per_token += 4 * 5 * m.vocab_size + blocks(m.disc_d_model, 4 * m.disc_d_model, m.disc_layers)
        fixed += weight_copies(m.disc_d_model, 4 * m.disc_d_model, m.disc_layers)
    return B * T * per_token + fixed


# ------------------------------------------------------------------------------------------ data and timing
def steps_per_epoch(cfg: StageConfig, cache_dir: Path, gpus: int) -> tuple[int | None, str]:
    """Optimizer steps per epoch on the cache as built (None + why when there is no cache), the way the stage
    loop counts them: windows of the train split, split over the GPUs, in micro-batches, in accumulations."""
    if not (cache_dir / "manifest.json").exists():
        return None, f"no cache in {cache_dir} yet: the first stage builds it"
    from aurl.data.dataset import WindowDataset
    from aurl.data.token_cache import TokenCache

    try:
        cache = TokenCache.open(cache_dir)
    except UserError as e:  # e.g. built with another vocabulary: the stage would rebuild it, the plan goes on
        return None, str(e)
    windows = len(WindowDataset(cache, "train", seq_len=cfg.data.seq_len, augment=None))
    steps = windows // gpus // cfg.data.batch_size // cfg.optim.grad_accum
    note = f"{windows:,} training windows of {cfg.data.seq_len} tokens in {cache_dir}"
    built = cache.manifest.get("options", {}).get("val_fraction")
    if built is not None and built != cfg.data.val_fraction:
        note += f"; split with val_fraction {built}, this stage's {cfg.data.val_fraction} would re-split it"
    if steps < 1:
        note += ("; not one optimizer step per epoch: the stage would refuse to start (lower data.batch_size or "
                 "optim.grad_accum, or use fewer GPUs)")
    return steps, note


def total_steps(cfg: StageConfig, per_epoch: int | None) -> int | None:
    if per_epoch is None:
        return cfg.train.max_steps or None
    steps = cfg.train.epochs * per_epoch
    return min(steps, cfg.train.max_steps) if cfg.train.max_steps else steps


def recorded_rate(state: dict | None, stage: int) -> tuple[float, int] | None:
    """(tokens/s over all processes, processes) that a previous run recorded for this stage, if any."""
    entry = ((state or {}).get("stages") or {}).get(str(stage)) or {}
    tps, world = entry.get("tokens_per_s"), entry.get("world_size")
    if not tps or not world:
        return None
    return float(tps), int(world)


# ------------------------------------------------------------------------------------------------- report
def _gib(n: float) -> str:
    return f"{n / GiB:,.2f} GiB" if n >= GiB else f"{n / 2**20:,.1f} MiB"


def stage_report(stage: int, cfg: StageConfig, gpus: int, gpu_mem_gib: float, cache_dir: Path,
                 state: dict | None) -> list[str]:
    m, d = cfg.model, cfg.data
    bf16 = cfg.train.mixed_precision == "bf16"
    counts = count_parameters(m)
    lines = [f"stage {stage}: mode {m.mode}, d_model {m.d_model}, {m.n_layers} layers, seq_len {d.seq_len}, "
             f"micro-batch {d.batch_size}, grad_accum {cfg.optim.grad_accum}, mixed precision "
             f"{cfg.train.mixed_precision}",
             f"  parameters: generator {counts.generator:,} (encoder {counts.encoder:,}), discriminator "
             f"{counts.discriminator:,}; largest module {counts.largest_module:,}"]
    act = activation_bytes(cfg)
    ckpt = ("train.activation_checkpointing is on: this figure is without it, an upper bound; "
            "bench/bench_memory.py measures both" if cfg.train.activation_checkpointing
            else "train.activation_checkpointing off")
    lines.append(f"  activations per micro-batch: {_gib(act)} ({ckpt}); "
                 f"verdicts against {HEADROOM:.0%} of {gpu_mem_gib:g} GiB")
    budget = HEADROOM * gpu_mem_gib * GiB
    for mode, s in model_states(counts, gpus, bf16).items():
        total = s.total + act
        verdict = "fits" if total <= budget else "does not fit"
        formula = FORMULAS[mode][0 if bf16 else 1] + (" + 16Pd" if counts.discriminator else "")
        lines.append(f"  {mode:<15} weights {_gib(s.weights)}, grads {_gib(s.grads)}, optimizer "
                     f"{_gib(s.optimizer)} ({formula}) + activations = {_gib(total)} per GPU: {verdict}")
    lines.append(f"  ZeRO-3 offload host RAM: {_gib(offload_host_bytes(counts, bf16))} over all nodes "
                 f"({'18P' if bf16 else '16P'}; DeepSpeed advises 1.5 x)")
    tokens_per_step = d.batch_size * d.seq_len * cfg.optim.grad_accum * gpus
    lines.append(f"  tokens per optimizer step: {tokens_per_step:,} ({d.batch_size} x {d.seq_len} x "
                 f"{cfg.optim.grad_accum} x {gpus} GPUs)")
    per_epoch, note = steps_per_epoch(cfg, cache_dir, gpus)
    lines.append(f"  steps per epoch: {'-' if per_epoch is None else f'{per_epoch:,}'} ({note})")
    steps = total_steps(cfg, per_epoch)
    rate = recorded_rate(state, stage)
    if rate is not None and steps:
        tps, world = rate
        scaled = tps * gpus / world  # linear scaling in GPUs: an assumption, optimistic across nodes
        eta = steps * tokens_per_step / scaled
        lines.append(f"  ETA: {_duration(eta)} for {steps:,} steps at {scaled:,.0f} tokens/s ({tps:,.0f} "
                     f"recorded on {world} process(es), scaled linearly to {gpus})")
    elif rate is None:
        lines.append("  ETA: - (no tokens/s recorded for this stage in the output dir's training_state.json)")
    else:
        lines.append("  ETA: - (" + ("no full optimizer step per epoch)" if per_epoch == 0 else
                                    "steps unknown until the cache exists)"))
    return lines


def _duration(seconds: float) -> str:
    h, rem = divmod(int(math.ceil(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


def plan(cfgs: dict[int, StageConfig], out_dir: Path, gpus: int, gpu_mem_gib: float) -> list[str]:
    """The plan's lines for every stage in cfgs."""
    if gpus < 1:
        raise UserError(f"--gpus {gpus}: must be >= 1")
    if not gpu_mem_gib > 0:
        raise UserError(f"--gpu-mem {gpu_mem_gib:g}: must be > 0 (GiB per GPU)")
    from aurl.rundir import RunDir
    from aurl.train import state as st

    state = st.read_state(out_dir)
    lines = [f"plan for {gpus} GPU(s) of {gpu_mem_gib:g} GiB (formulas: aurl/train/plan.py)"]
    for stage, cfg in cfgs.items():
        lines += stage_report(stage, cfg, gpus, gpu_mem_gib, RunDir(out_dir).cache(cfg.data.cache_dir), state)
    return lines
