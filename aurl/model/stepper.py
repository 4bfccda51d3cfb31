"""One decoding step at a cost that does not grow with the sequence (attention over the cache aside).

Why this exists: at batch 1, the full-size stage-1 decoder (3.35 M parameters) does ~7 MFLOP per token, a
fraction of a millisecond of arithmetic, yet eager PyTorch took 5.7 ms per token: ~300 small op dispatches
and ~80 nn.Module calls per token (bench/RESULTS.md, "decoding"). The step is therefore written as two
functions of tensors with fixed shapes, which torch.compile (``compile=True``) turns into a few fused
kernels each:

- ``pick(logits, noise)`` -> token [B]: the grammar mask (aurl.model.sampling.GrammarMask), the temperature
  / top-k / nucleus filter, the draw, PAD after END, and the grammar state's update with the new token;
- ``advance(token)`` -> next logits [B, V]: the model's KV-cached decode of that one token.

The draw is torch.multinomial's own algorithm for one sample, made explicit: multinomial(p, 1) is
argmax(p / q) with q ~ Exp(1) drawn by ``exponential_`` on the same generator (ATen's fast path for
n_sample == 1), so the noise is drawn eagerly (one op, the generator stays outside the graph) and the
tokens are those torch.multinomial draws at the same seed. No step reads a tensor back to Python (no
``.item()``, no device sync; only stop_at_end checks once per token whether every row ended).

Compiled, the step is called without torch.compile's per-call machinery: on this 2-core CPU Dynamo's guard
evaluation and frame handling cost ~150 us a token, a seventh of the whole step (bench/RESULTS.md). Nothing a
guard checks changes between the tokens of one generate() call (the model, its shapes, the sampling
settings, the grammar, the cache's shapes: only the cache length moves, and the graph takes it as a symbol),
so the guards are checked once per call, at its first compiled token (``compiled_step``): the step is
compiled ahead of time (``torch.compile(...).aot_compile``) and each later token calls the compiled code
directly. Not done yet: CUDA graphs on GPU (torch.compile's "reduce-overhead"): they need fixed shapes, i.e.
attention over the whole pre-allocated cache with a position mask instead of the growing slice the CPU path
reads; on CUDA the step is compiled as on CPU, without the C++ wrapper and untested on a GPU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aurl.vocab import END_ID, PAD_ID


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Scaled, top-k / nucleus-filtered logits [B, V] (float32; removed entries are -inf)."""
    x = logits.float() / max(temperature, 1e-8)
    if top_k and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, idx = torch.sort(x, dim=-1, descending=True)
        probs = F.softmax(sorted_x, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        x = x.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return x


def draw(logits: torch.Tensor, temperature: float, top_k: int, top_p: float,
         noise: torch.Tensor | None) -> torch.Tensor:
    """One token per row [B] from logits [B, V]; temperature 0 = greedy (noise unused). noise [B, V]: Exp(1)
    draws (exp_noise): the token is the one torch.multinomial(softmax(filtered), 1) draws with that noise."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = F.softmax(filter_logits(logits, temperature, top_k, top_p), dim=-1)
    return (probs / noise).argmax(-1)


def exp_noise(batch: int, vocab: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """The Exp(1) noise torch.multinomial draws for one sample per row: same generator calls, same values."""
    return torch.empty(batch, vocab, device=device).exponential_(1, generator=generator)


def keep_tensor_guards(entries) -> list[bool]:
    """torch.compile's guard filter for the step: drop the guards on the model's module tree (its types,
    attribute dicts and ids) but keep every tensor guard (a parameter's shape, dtype, device and strides) and
    every guard outside the model (the sampling settings, the cache). The parameters are graph inputs, read
    afresh at each call, so another model of the same shapes is served correctly by the same compiled step
    (no second compilation), and one of other shapes fails a tensor guard and is compiled for. What is no
    longer checked: a module attribute that changes the code path (e.g. model.decoder.checkpointing), which
    nothing sets during generate(). Also dropped, as aot_compile's own default filter drops them: guards on
    module globals (constants such as the vocabulary offsets) and the kinds it cannot keep (object ids)."""
    from torch._dynamo.guards import CheckFunctionManager

    unkept = CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES
    return [(e.guard_type == "TENSOR_MATCH" or not e.orig_guard.source.is_unspecialized_nn_module())
            and not e.is_global and e.guard_type not in unkept for e in entries]


# the steps compiled in this process: one per set of guards (model shapes, sampling settings, batch, cache)
_COMPILED_STEPS: list = []


def _one_step(stepper: Stepper, logits: torch.Tensor, noise: torch.Tensor | None, cache):
    return stepper._step(logits, noise, cache)


def compiled_step(stepper: Stepper, logits: torch.Tensor, noise: torch.Tensor | None, cache):
    """The compiled one-token step for this stepper, as a plain function of (stepper, logits, noise, cache):
    a step compiled earlier in this process whose guards hold for these arguments, else a new one. Its guards
    are checked here, once; the caller then calls it for every later token of its generate() call."""
    args = (stepper, logits, noise, cache)
    for compiled in _COMPILED_STEPS:
        if compiled.guard_check(*args):
            return compiled.fn
    # dynamic=True makes the cache length (an int) a symbol; every tensor the step reads besides the
    # parameters (static already) is marked static, so the kernels are those of fixed shapes. Floats (the
    # temperature, top_p) stay constants of the graph, guarded like the other settings
    for t in stepper.tensors(logits, noise, cache):
        torch._dynamo.mark_static(t)
    # on CPU the C++ wrapper calls the graph's kernels without a Python line per kernel (1.6x fewer ms per
    # token than the Python wrapper, bench/RESULTS.md)
    cpu = logits.device.type == "cpu"
    options = {"guard_filter_fn": keep_tensor_guards} | ({"cpp_wrapper": True} if cpu else {})
    # enable_aot_compile: torch 2.11 (the GPU machine's) offers .aot_compile only with it on (2.13's default)
    with torch._dynamo.config.patch(specialize_float=True, enable_aot_compile=True):
        compiled = torch.compile(_one_step, fullgraph=True, dynamic=True, options=options).aot_compile((args, {}))
    _COMPILED_STEPS.append(compiled)
    return compiled.fn


class Stepper:
    """The per-token work of one generate() call (see the module docstring), compiled or eager.

    pick(logits, noise) -> token [B]; step(logits, noise, cache) -> (token, the next logits [B, V]) is pick
    then the cached decode of that token, one compiled graph (one dispatch per token). grammar: the
    sampler's GrammarMask (apply(logits) in place, update(token)); finished [B] bool, updated in place: rows
    that drew END (stop_at_end) get PAD from then on.
    """

    def __init__(self, model, z, grammar, finished: torch.Tensor, temperature: float, top_k: int,
                 top_p: float, compile: bool = False):
        self.model, self.z, self.grammar, self.finished = model, z, grammar, finished
        self.sampling = (temperature, top_k, top_p)
        self.step = self._compiled_step if compile else self._step
        self._compiled = None

    def tensors(self, logits: torch.Tensor, noise: torch.Tensor | None, cache) -> list[torch.Tensor]:
        """Every tensor a step reads besides the model's parameters."""
        rotary = self.model.decoder.rotary
        state = self.grammar.state or ()
        return [t for t in (logits, noise, self.z, self.finished, self.grammar.banned, cache.sounding, *state,
                            *cache.k, *cache.v, *(cache.qkv or ()), rotary.cos, rotary.sin) if t is not None]

    def pick(self, logits: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        self.grammar.apply(logits)
        tok = draw(logits, *self.sampling, noise)
        tok = torch.where(self.finished, torch.full_like(tok, PAD_ID), tok)
        self.finished |= tok == END_ID
        self.grammar.update(tok)
        return tok

    def _step(self, logits: torch.Tensor, noise: torch.Tensor | None, cache) -> tuple[torch.Tensor, torch.Tensor]:
        tok = self.pick(logits, noise)
        # a fresh tensor, not a view: a view's base would be guarded too
        return tok, self.model.decode(tok[:, None], self.z, cache)[:, -1].clone()

    def _compiled_step(self, logits: torch.Tensor, noise: torch.Tensor | None, cache):
        if self._compiled is None:
            self._compiled = compiled_step(self, logits, noise, cache)
        return self._compiled(self, logits, noise, cache)
