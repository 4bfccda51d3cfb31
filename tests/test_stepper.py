"""Fast decoding (aurl.model.stepper): the same tokens as torch.multinomial and as the full-recompute path."""

from __future__ import annotations

import torch
from test_vaegan import _real_windows, tiny

from aurl.model import MusicTransformerVAEGAN
from aurl.model.sampling import generate, make_generator, sample_next
from aurl.model.stepper import draw, exp_noise
from aurl.vocab import VOCAB_SIZE


def test_draw_is_torch_multinomial_with_the_same_generator():
    """draw(softmax / Exp(1) noise) picks the token torch.multinomial picks from the same generator state, and
    leaves the generator where multinomial leaves it (so later draws agree too)."""
    g = torch.Generator().manual_seed(0)
    compared = 0
    for trial in range(24):
        logits = torch.randn(3, VOCAB_SIZE, generator=g) * (1 + trial % 5)
        logits[:, : trial % 7] = float("-inf")
        temperature, top_k, top_p = (0.7, 1.0, 1.3)[trial % 3], (0, 5, 50)[trial % 3], (1.0, 0.9, 0.5)[trial % 3]
        ref_gen, gen = make_generator(trial), make_generator(trial)
        for _ in range(4):
            ref = sample_next(logits, temperature, top_k, top_p, ref_gen)
            got = draw(logits, temperature, top_k, top_p, exp_noise(3, VOCAB_SIZE, gen, "cpu"))
            assert torch.equal(ref, got)
            compared += ref.numel()
        assert torch.equal(torch.rand(4, generator=ref_gen), torch.rand(4, generator=gen))
    assert compared == 24 * 4 * 3


def test_fast_decoding_gives_the_tokens_of_the_full_recompute_path():
    """Grammar on, top-k and nucleus on, the sounding-notes input and output bias on (both non-zero), a prompt
    with notes sounding and enough tokens for three context restarts: the KV-cached step, eager and
    torch.compile'd, draws token for token what the uncached path draws (every token recomputed from the
    whole window). The compiled step is one graph for every cache length (the length a symbol, even when it
    is compiled at length 1, after a one-token prompt), compiled once and reused by the second call.
    Peaked attention (q and k weights x 20), so that a token depends on which keys were attended to.
    Mutations: the step compiled without dynamic=True (the length a constant of the graph, its guard never
    checked again) -> fails; the decoded token's stacked projection in the order k, q, v -> fails (with the
    tiny model's near-uniform attention it passed)."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer", max_seq_len=32, sounding_embedding=True,
                                        sounding_output_bias=True)).eval()
    with torch.no_grad():
        model.sound_proj.weight.normal_(0, 0.5)
        model.sound_bias.copy_(torch.tensor([-0.05, -0.1]))  # -1.6 / -3.2 nats (GAIN 32)
        model.tok_emb.weight.mul_(4)  # peaked distributions: a token then depends on what the model was fed
        for block in model.decoder.blocks:  # peaked attention: a token then depends on which keys it attends to
            block.attn.q.weight.mul_(20)
            block.attn.k.weight.mul_(20)
    prompt = _real_windows(n_pieces=1, per_piece=2, length=30)[:, :12]
    kw = dict(temperature=1.0, top_k=40, top_p=0.95, grammar=True)
    ref = generate(model, prompt, 90, generator=make_generator(5), use_cache=False, **kw)
    compared = 0
    graphs = counters["stats"]["unique_graphs"]
    start = prompt[:, :1]
    out = generate(model, start, 40, generator=make_generator(6), compile=True, **kw)
    assert torch.equal(out, generate(model, start, 40, generator=make_generator(6), use_cache=False, **kw))
    compared += int((out[:, 1:] != 0).sum())
    for compile in (False, True):
        out = generate(model, prompt, 90, generator=make_generator(5), use_cache=True, compile=compile, **kw)
        assert torch.equal(out, ref)
        compared += int((out[:, 12:] != 0).sum())
    assert counters["stats"]["unique_graphs"] - graphs == 1
    assert compared == 2 * 2 * 90 + 2 * 40


def test_the_compiled_step_serves_each_model_its_own_tokens():
    """The compiled step drops the guards on the model's module tree (stepper.keep_tensor_guards) but keeps the
    tensor guards: two models of the same shapes share its graphs and each draws its own eager tokens (the
    parameters are graph inputs); a model whose feed-forward is wider fails a tensor guard and is compiled
    for, instead of running the other model's kernels on its weights; other sampling settings are compiled for
    too. Mutations: the filter dropping tensor guards too -> fails (RuntimeError: the d_ff 96 model ran the
    d_ff 64 graph); the filter keeping only tensor guards (the step's own constants unguarded) -> fails (the
    top_k 5 call ran the top_k 0 graph). Run with torch._dynamo's enable_aot_compile off, the default of torch
    2.11 (the GPU machine's, bench/gpu_check.sh), which offers .aot_compile only with it on: the step sets it
    itself. Mutation: the step's config patch without enable_aot_compile=True -> fails (AttributeError)."""
    prompt = _real_windows(n_pieces=1, per_piece=1, length=16)[:, :6]
    compared = 0
    with torch._dynamo.config.patch(enable_aot_compile=False):
        for seed, d_ff in ((1, 64), (2, 64), (3, 96)):
            torch.manual_seed(seed)
            model = MusicTransformerVAEGAN(tiny("transformer", max_seq_len=48, d_ff=d_ff)).eval()
            with torch.no_grad():
                model.tok_emb.weight.mul_(4)  # peaked distributions: the tokens tell the models apart
            outs = [generate(model, prompt, 30, generator=make_generator(0), compile=compile)
                    for compile in (False, True)]
            assert torch.equal(outs[0], outs[1]), f"model {seed} (d_ff {d_ff})"
            compared += outs[0].shape[1] - 6
        # other sampling settings, same model and shapes: the settings are Python constants of the graph, guarded
        outs = [generate(model, prompt, 30, temperature=0.7, top_k=5, generator=make_generator(0),
                         compile=compile) for compile in (False, True)]
        assert torch.equal(outs[0], outs[1]), "top_k 5, temperature 0.7"
        assert compared == 3 * 30
