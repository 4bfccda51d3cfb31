"""python -m aurl.generate: MIDI files that read back, reproducible, continuing prompts; clean errors."""

from __future__ import annotations

import subprocess
import sys

import pretty_midi
import pytest
import torch
from midi_factory import write_simple_midi

from aurl.codec import decode
from aurl.generate import main
from aurl.model import ModelConfig, MusicTransformerVAEGAN
from aurl.model.checkpoint import save_model_file
from aurl.model.sampling import generate, make_generator
from aurl.vocab import START_ID


def tiny(mode):
    return ModelConfig(mode=mode, d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, dropout=0.0,
                       latent_dim=8, encoder_layers=1, disc_d_model=32, disc_layers=1, disc_heads=2)


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for mode in ("transformer", "vae_gan"):
        torch.manual_seed(0)
        model = MusicTransformerVAEGAN(tiny(mode))
        if mode == "vae_gan":
            torch.nn.init.normal_(model.latent_proj.weight, std=0.3)
        out[mode] = save_model_file(d / f"{mode}.pt", model, tiny(mode), {}, {})
    return out


def notes_in(path) -> int:
    return sum(len(i.notes) for i in pretty_midi.PrettyMIDI(str(path)).instruments)


def test_files_read_back_with_expected_notes_and_same_seed_same_files(ckpts, tmp_path):
    args = ["--checkpoint", str(ckpts["transformer"]), "--num", "2", "--length", "100", "--seed", "5",
            "--top-k", "50", "--top-p", "0.95", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    files = sorted((tmp_path / "a").glob("*.mid"))
    assert len(files) == 2
    for f in files:
        assert f.read_bytes() == (tmp_path / "b" / f.name).read_bytes()
    # the expected notes: the same sampling done here, decoded
    model = MusicTransformerVAEGAN(tiny("transformer"))
    model.load_state_dict(torch.load(ckpts["transformer"], weights_only=True)["model_state"])
    toks = generate(model, torch.full((2, 1), START_ID), 100, top_k=50, top_p=0.95, generator=make_generator(5))
    for f, row in zip(files, toks, strict=True):
        expected = decode(row.tolist()).num_notes
        assert expected > 0 and notes_in(f) == expected
        pm = pretty_midi.PrettyMIDI(str(f))
        assert all(n.end > n.start for i in pm.instruments for n in i.notes)


def test_prompt_is_continued(ckpts, tmp_path):
    """The file holds the prompt's 12 notes, then new ones (measured: 18 notes in all). Mutation: the prompt's
    END kept (the continuation then lies after END and is cut off) -> fails."""
    prompt = write_simple_midi(tmp_path / "prompt.mid", seed=1, n_notes=12)
    out = tmp_path / "out"
    assert main(["--checkpoint", str(ckpts["transformer"]), "--prompt", str(prompt), "--length", "30",
                 "--out", str(out), "--device", "cpu"]) == 0
    (f,) = out.glob("*.mid")
    first = sorted(pretty_midi.PrettyMIDI(str(prompt)).instruments[0].notes, key=lambda n: (n.start, n.pitch))[0]
    got = sorted((n for i in pretty_midi.PrettyMIDI(str(f)).instruments for n in i.notes),
                 key=lambda n: (n.start, n.pitch))
    assert len(got) > 12 and got[0].pitch == first.pitch


@pytest.mark.parametrize("mode,extra", [("prior", []), ("posterior", ["a"]), ("interpolate", ["a", "b"])])
def test_vae_latent_modes(ckpts, tmp_path, mode, extra):
    sources = [str(write_simple_midi(tmp_path / f"{s}.mid", seed=i)) for i, s in enumerate(extra)]
    out = tmp_path / "out"
    args = ["--checkpoint", str(ckpts["vae_gan"]), "--mode", mode, "--num", "3", "--length", "40",
            "--out", str(out), "--device", "cpu"] + (["--source", *sources] if sources else [])
    assert main(args) == 0
    assert len(list(out.glob("*.mid"))) == 3


@pytest.mark.parametrize("extra,match", [
    (["--top-p", "0"], "--top-p"),
    (["--num", "0"], "--num"),
    (["--mode", "posterior"], "vae checkpoint"),
    (["--prompt", "missing.mid"], "not found"),
    (["--prompt", "GARBAGE"], "cannot read MIDI"),
], ids=["top-p", "num", "mode", "missing-prompt", "garbage-prompt"])
def test_bad_input_is_one_line_and_exit_2(ckpts, tmp_path, capsys, extra, match):
    (tmp_path / "GARBAGE").write_bytes(b"not midi")
    extra = [str(tmp_path / e) if e in ("missing.mid", "GARBAGE") else e for e in extra]
    assert main(["--checkpoint", str(ckpts["transformer"]), "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err


def test_argparse_errors_are_one_line_too(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--checkpoint", "x.pt", "--num", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--num" in err


def test_module_entry_point_missing_checkpoint(tmp_path):
    r = subprocess.run([sys.executable, "-m", "aurl.generate", "--checkpoint", str(tmp_path / "none.pt")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "no such file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("seed", range(4))
def test_finalize_is_grammatical_and_keeps_the_notes(seed):
    import numpy as np

    from aurl.grammar import grammar_errors
    from aurl.model.sampling import finalize
    from aurl.vocab import NOTE_ON_OFFSET, TIME_SHIFT_OFFSET

    rng = np.random.default_rng(seed)
    # mostly note events and short shifts, plus specials sprinkled in (as a badly trained model might emit)
    pool = np.r_[np.arange(NOTE_ON_OFFSET, NOTE_ON_OFFSET + 20), np.arange(92, 112),
                 np.arange(TIME_SHIFT_OFFSET, TIME_SHIFT_OFFSET + 4), [0, 1, 3]]
    toks = rng.choice(pool, 400).tolist()
    fixed = finalize([START_ID] + toks)
    assert not any(grammar_errors(fixed).values())
    a, b = decode(toks), decode(fixed)
    assert a.num_notes == b.num_notes
    assert np.array_equal(a.pitch, b.pitch) and np.allclose(a.start, b.start) and np.allclose(a.end, b.end)


def test_generation_within_the_window_is_what_it_always_was():
    """While prompt + new tokens fit the context, every token is drawn from a full pass over everything so far:
    the model is fed the whole sequence each time, and the tokens at a fixed seed are those of a plain loop
    written here without any window."""
    from aurl.model.sampling import sample_next
    from aurl.vocab import END_ID, PAD_ID, UNK_ID

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer")).eval()
    with torch.no_grad():
        model.tok_emb.weight.mul_(8)  # peaked distributions: a token then depends on what the model was fed
    prompt = torch.full((2, 1), START_ID)
    decode, fed = model.decode, []
    model.decode = lambda ids, z=None, cache=None, **kw: fed.append(ids.shape[1] + (cache.length if cache else 0)) \
        or decode(ids, z, cache, **kw)
    compared = 0
    for use_cache in (True, False):
        fed.clear()
        out = generate(model, prompt, 47, generator=make_generator(7), grammar=False, context=48,
                       use_cache=use_cache)
        assert fed == list(range(1, 49))  # the whole sequence so far, every time (48 tokens fit the context)
        gen, seq = make_generator(7), prompt
        with torch.no_grad():
            for _ in range(47):
                logits = decode(seq)[:, -1]
                logits[:, [PAD_ID, START_ID, UNK_ID, END_ID]] = float("-inf")
                seq = torch.cat([seq, sample_next(logits, 1.0, 0, 1.0, gen)[:, None]], dim=1)
        assert torch.equal(out, seq)
        compared += seq.numel()
    assert compared == 2 * 2 * 48


def test_generation_beyond_the_window_never_feeds_more_than_the_trained_window(ckpts, tmp_path, capsys):
    """A model file trained on 24-token windows (max_seq_len 64): generation of 100 tokens feeds at most 24
    at once, says so, stays grammatical, and the cached and uncached paths agree. Once the window is full,
    the oldest quarter drops out: the model sees 18 to 24 tokens (sampling's docstring), each count reached.
    A prompt longer than the window starts as a restart does. Mutations: the restart keeping half the window
    (keep = L - L // 2) -> fails; a long prompt fed whole (win = 0) -> fails."""
    from aurl.grammar import grammar_errors
    from aurl.model.checkpoint import context_length, load_model_file

    torch.manual_seed(0)
    path = save_model_file(tmp_path / "w24.pt", MusicTransformerVAEGAN(tiny("transformer")), tiny("transformer"),
                           {}, {}, seq_len=24)
    model, cfg, meta = load_model_file(path)
    assert context_length(cfg, meta) == 24 and cfg.max_seq_len == 64
    seen = []
    decode = model.decode

    def spy(ids, z=None, cache=None, **kw):
        seen.append(ids.shape[1] + (cache.length if cache is not None else 0))
        return decode(ids, z, cache, **kw)

    model.decode = spy
    rows = {}
    for use_cache in (True, False):
        seen.clear()
        rows[use_cache] = generate(model, torch.full((3, 1), START_ID), 100, generator=make_generator(2),
                                   context=context_length(cfg, meta), use_cache=use_cache)
        assert len(seen) == 101 and max(seen) == 24  # the window is used in full, never exceeded
        full = seen[seen.index(24):]
        assert set(full) == set(range(18, 25)) and full.count(18) >= 3, (use_cache, full)  # 3/4 kept at restart
    assert torch.equal(rows[True], rows[False])
    for use_cache in (True, False):  # a prompt longer than the window: its last 3/4 window is fed first
        seen.clear()
        generate(model, rows[True][:, :40], 10, generator=make_generator(2), context=24, use_cache=use_cache)
        assert seen[0] == 18 and max(seen) == 24, (use_cache, seen)
    for row in rows[True].tolist():
        errors = grammar_errors(row)
        assert errors.pop("unclosed_notes") >= 0 and sum(errors.values()) == 0, errors
    assert main(["--checkpoint", str(path), "--length", "60", "--out", str(tmp_path / "o"), "--device", "cpu"]) == 0
    assert "context: at most 24 tokens" in capsys.readouterr().out


def test_the_cli_generates_within_the_trained_window(tmp_path):
    """python -m aurl.generate hands generate() the window the model file records: its file is the one
    generate() gives at context 24, which differs from the one at the model's max_seq_len 64 (the decoder's
    weights drawn at std 1, so what it is fed shows in what it draws: measured, 21 of the 80 tokens differ)."""
    from aurl.generate import tokens_to_midi
    from aurl.model.checkpoint import load_model_file

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer"))
    with torch.no_grad():
        for p in model.decoder.parameters():
            if p.dim() == 2:
                torch.nn.init.normal_(p, std=1.0)
        model.tok_emb.weight.mul_(3)
    path = save_model_file(tmp_path / "w24.pt", model, tiny("transformer"), {}, {}, seq_len=24)
    model, _, _ = load_model_file(path)
    assert main(["--checkpoint", str(path), "--length", "80", "--seed", "3", "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 0
    (got,) = (tmp_path / "o").glob("*.mid")
    for context in (24, 64):
        row = generate(model, torch.full((1, 1), START_ID), 80, generator=make_generator(3), context=context)[0]
        tokens_to_midi(row.tolist(), tmp_path / f"context{context}.mid")
    assert got.read_bytes() == (tmp_path / "context24.mid").read_bytes() != (tmp_path / "context64.mid").read_bytes()


def test_a_long_prompt_is_fed_as_its_end_behind_its_state():
    """A prompt longer than half the context is fed as its last tokens behind the state prefix (aurl.grammar):
    at most half the context, ending as the prompt ends, and no NOTE_OFF whose NOTE_ON was cut away."""
    import numpy as np
    from midi_factory import random_score

    from aurl import codec, grammar, vocab
    from aurl.generate import model_prompt

    compared = with_prefix = 0
    for seed in range(8):
        prompt = codec.encode(random_score(seed, n_notes=60, n_programs=2)).astype(np.int64)
        prompt = prompt[prompt != vocab.END_ID]
        fed = model_prompt(prompt, 64)
        assert 8 <= len(fed) <= 32 < len(prompt), (seed, len(fed))
        np.testing.assert_array_equal(fed[-8:], prompt[-8:])
        errors = grammar.grammar_errors(fed)
        assert errors["note_off_without_on"] == errors["duplicate_note_on"] == 0, (seed, errors)
        with_prefix += vocab.token_kind(int(fed[0])) == "tempo"  # the state prefix opens with the tempo
        compared += 1
    assert compared == 8 and with_prefix == 8


def test_the_latent_modes_read_their_sources(tmp_path):
    """--mode posterior samples around the source's posterior: another source, other files at the same seed.
    --mode interpolate ends at the second source's mean: with the second source replaced by the first, the
    last file differs. The encoder is made to tell pieces apart (a fresh one gives every piece mu ~ 0 and
    sigma ~ 1, so z would be the seed's noise whatever the source) and the decoder to read z."""
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("vae_gan"))
    with torch.no_grad():
        torch.nn.init.normal_(model.to_mu.weight, std=1.0)
        model.to_logvar.bias.fill_(-8.0)  # sigma ~ 0.02: z ~ mu
        torch.nn.init.normal_(model.latent_proj.weight, std=1.0)
    path = save_model_file(tmp_path / "vae_gan.pt", model, tiny("vae_gan"), {}, {})
    a = write_simple_midi(tmp_path / "a.mid", seed=0)
    b = write_simple_midi(tmp_path / "b.mid", seed=1)

    def files(mode, *sources):
        out = tmp_path / f"{mode}-{'-'.join(s.stem for s in sources)}"
        assert main(["--checkpoint", str(path), "--mode", mode, "--num", "3", "--length", "40",
                     "--seed", "2", "--out", str(out), "--device", "cpu", "--source", *map(str, sources)]) == 0
        return [p.read_bytes() for p in sorted(out.glob("*.mid"))]

    from_a, from_b = files("posterior", a), files("posterior", b)
    assert len(from_a) == len(from_b) == 3 and from_a != from_b
    a_to_b, a_to_a = files("interpolate", a, b), files("interpolate", a, a)
    assert len(a_to_b) == len(a_to_a) == 3 and a_to_b[-1] != a_to_a[-1]


@pytest.fixture(scope="module")
def ending_ckpt(tmp_path_factory):
    """An untrained transformer that closes its notes and ends: END made likely and every NOTE_OFF as likely
    (their rows set to END's; tied head), so --stop-at-end has something to stop at."""
    from test_sampling import closes_and_ends

    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer"))
    closes_and_ends(model)
    return save_model_file(tmp_path_factory.mktemp("ending") / "ending.pt", model, tiny("transformer"), {}, {})


@pytest.mark.parametrize("flag", [["--no-grammar"], ["--stop-at-end"], ["--prompt-tokens", "6"],
                                  ["--latent-scale", "0"]], ids=lambda f: f[0])
def test_each_sampling_flag_reaches_generation(ckpts, ending_ckpt, tmp_path, flag):
    """Each flag that shapes the samples changes the files at the same seed: none is parsed and then ignored.
    Mutations: run() passing grammar=True whatever --no-grammar, stop_at_end=False whatever --stop-at-end,
    the prompt not cut to --prompt-tokens, sample_prior without --latent-scale -> the matching case fails."""
    prompt = write_simple_midi(tmp_path / "prompt.mid", seed=1, n_notes=12)
    checkpoint = ckpts["vae_gan"] if flag[0] == "--latent-scale" else ending_ckpt
    args = ["--checkpoint", str(checkpoint), "--num", "2", "--length", "40", "--seed", "1", "--device", "cpu"]
    if flag[0] == "--prompt-tokens":
        args += ["--prompt", str(prompt)]
    files = {}
    for name, extra in (("default", []), ("flag", flag)):
        assert main([*args, *extra, "--out", str(tmp_path / name)]) == 0
        files[name] = [p.read_bytes() for p in sorted((tmp_path / name).glob("*.mid"))]
    assert len(files["default"]) == len(files["flag"]) == 2
    assert files["default"] != files["flag"]
    if flag[0] == "--stop-at-end":  # the rows that end are shorter: fewer notes in all
        notes = {name: sum(notes_in(p) for p in (tmp_path / name).glob("*.mid")) for name in files}
        assert notes["flag"] < notes["default"], notes
