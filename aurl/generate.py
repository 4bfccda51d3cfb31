"""Generate MIDI from a trained model file.

    python -m aurl.generate --checkpoint outputs/checkpoints/best_model.pt --num 4 --length 1024 --out outputs/samples
    python -m aurl.generate --checkpoint ... --prompt piece.mid            # continue a piece
    python -m aurl.generate --checkpoint ... --audio                       # and a .wav beside each file
    python -m aurl.generate --checkpoint ... --mode posterior --source a.mid   # vae: resample around a piece
    python -m aurl.generate --checkpoint ... --mode interpolate --source a.mid b.mid --num 5

Sampling uses the decoder's KV cache; the same checkpoint, arguments and seed give the same files (on the
same device). Every file is well formed: notes still sounding at the end are closed, special tokens never
reach the MIDI (aurl.codec.decode).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from aurl.codec import decode, encode
from aurl.console import ArgParser, UserError, check_writable_folder, print0, report_error
from aurl.rundir import RunDir
from aurl.vocab import END_ID, PAD_ID, START_ID

VAE_MODES = ("prior", "posterior", "interpolate")


def _parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m aurl.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="model file written by training (best_model.pt)")
    p.add_argument("--num", type=int, default=1, help="files to write (interpolate: points on the path, >= 2)")
    p.add_argument("--length", type=int, default=1024, help="new tokens per file (not counting the prompt)")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (>= 0; 0 = greedy)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k likeliest tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus: smallest set with this mass (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--prompt", type=Path, default=None, help="MIDI file whose tokens the samples continue")
    p.add_argument("--prompt-tokens", type=int, default=0,
                   help="use only the first N tokens of the prompt (0 = all of it)")
    p.add_argument("--mode", choices=VAE_MODES, default="prior",
                   help="vae checkpoints: latent from the prior, from --source's posterior, or interpolated "
                        "between two --source pieces")
    p.add_argument("--source", type=Path, nargs="+", default=[], help="piece(s) to encode (posterior: 1; interpolate: 2)")
    p.add_argument("--latent-scale", type=float, default=1.0, help="std multiplier of prior/posterior samples")
    p.add_argument("--stop-at-end", action="store_true", help="let the model end a piece early with END")
    p.add_argument("--no-grammar", action="store_true",
                   help="sample the raw distribution (default: grammar-constrained decoding, see aurl.model.sampling)")
    p.add_argument("--out", type=Path, default=RunDir("outputs").samples,
                   help="folder for the MIDI files (default: outputs/samples)")
    p.add_argument("--audio", action="store_true",
                   help="also render each file to WAV beside it (FluidSynth; see aurl.evaluate.audio)")
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda[:i]")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the one-token step: the same files, several times more tokens/s at "
                        "batch 1, after a one-off compilation (seconds to minutes on CPU; pays off for long --length)")
    return p


def _read_tokens(path: Path, flag: str) -> np.ndarray:
    from aurl.data.midi_io import MidiReadError, read_midi

    if not path.is_file():
        raise UserError(f"{flag} {path}: MIDI file not found")
    try:
        score = read_midi(path)
    except (MidiReadError, OSError) as e:
        raise UserError(f"{flag} {path}: cannot read MIDI ({e})") from e
    return encode(score).astype(np.int64)


def _validate(args, cfg) -> None:
    check_writable_folder("--out", args.out)
    if args.num < 1:
        raise UserError(f"--num must be >= 1, got {args.num}")
    if args.length < 1:
        raise UserError(f"--length must be >= 1, got {args.length}")
    from aurl.model.sampling import check_sampling_options

    check_sampling_options(args.temperature, args.top_k, args.top_p)
    if args.latent_scale < 0:
        raise UserError(f"--latent-scale must be >= 0, got {args.latent_scale}")
    if args.prompt_tokens < 0:
        raise UserError(f"--prompt-tokens must be >= 0, got {args.prompt_tokens}")
    if not cfg.is_vae and (args.mode != "prior" or args.source):
        raise UserError(f"--mode {args.mode} / --source need a vae checkpoint; this one is mode {cfg.mode}")
    need = {"prior": 0, "posterior": 1, "interpolate": 2}[args.mode]
    if len(args.source) != need:
        raise UserError(f"--mode {args.mode} needs {need} --source file(s), got {len(args.source)}")
    if args.mode == "interpolate" and args.num < 2:
        raise UserError(f"--mode interpolate needs --num >= 2 (points on the path), got {args.num}")


def tokens_to_midi(tokens, path: Path) -> int:
    """Write one token row (anything after END ignored) as MIDI; returns the number of notes."""
    from aurl.data.midi_io import write_midi
    from aurl.model.sampling import finalize

    score = decode(finalize(tokens))
    write_midi(score, path)
    return score.num_notes


def model_prompt(prompt: np.ndarray, context: int) -> np.ndarray:
    """What the model is fed of a prompt: all of it when it fills at most half the context, else its last
    tokens behind a prefix restating the state in force where they start (aurl.grammar), as a training window
    that starts inside a piece does, so the model never sees NOTE_OFFs of notes it was not shown."""
    from aurl import grammar

    budget = max(2, context // 2)
    if len(prompt) <= budget:
        return prompt
    cut = len(prompt) - budget
    for _ in range(8):  # the prefix length depends on the cut: a few rounds settle it
        prefix = grammar.state_prefix(grammar.state_at(prompt, cut))
        if len(prefix) + len(prompt) - cut <= budget or cut >= len(prompt) - 1:
            break
        cut = min(len(prompt) - 1, len(prompt) - budget + len(prefix))
    return np.concatenate([prefix, prompt[cut:]]).astype(np.int64)


def run(args) -> list[Path]:
    from aurl.model.checkpoint import context_length, load_model_file, resolve_device
    from aurl.model.sampling import (
        context_note,
        encode_posterior,
        generate,
        interpolate,
        make_generator,
        sample_posterior,
        sample_prior,
    )

    device = resolve_device(args.device)
    model, cfg, meta = load_model_file(args.checkpoint, map_location=device)
    _validate(args, cfg)
    context = context_length(cfg, meta)
    print0(context_note(context, cfg.max_seq_len))
    prompt = np.array([START_ID], dtype=np.int64)
    if args.prompt is not None:
        prompt = _read_tokens(args.prompt, "--prompt")
        prompt = prompt[prompt != END_ID]  # continue the piece
        if args.prompt_tokens:
            prompt = prompt[: args.prompt_tokens]
    fed = model_prompt(prompt, context)
    gen = make_generator(args.seed, device)
    z = None
    if cfg.is_vae:
        if args.mode == "prior":
            z = sample_prior(model, args.num, gen, args.latent_scale)
        else:
            src = [_read_tokens(p, "--source")[:context] for p in args.source]
            width = max(len(s) for s in src)
            batch = torch.full((len(src), width), PAD_ID, dtype=torch.long)
            for i, s in enumerate(src):
                batch[i, : len(s)] = torch.from_numpy(s)
            mu, logvar = encode_posterior(model, batch)
            if args.mode == "posterior":
                z = sample_posterior(mu.expand(args.num, -1), logvar.expand(args.num, -1), gen, args.latent_scale)
            else:
                z = interpolate(mu[0], mu[1], args.num)
    prompts = torch.from_numpy(fed).unsqueeze(0).expand(args.num, -1)
    new = generate(model, prompts, args.length, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, generator=gen, z=z, stop_at_end=args.stop_at_end,
                   grammar=not args.no_grammar, context=context, compile=args.compile).cpu()[:, len(fed):]
    tokens = torch.cat([torch.from_numpy(prompt).unsqueeze(0).expand(args.num, -1), new], dim=1)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.checkpoint).stem
    paths = []
    for i, row in enumerate(tokens):
        path = args.out / f"{stem}_{cfg.mode}_{args.mode if cfg.is_vae else 'lm'}_seed{args.seed}_{i:03d}.mid"
        n = tokens_to_midi(row.tolist(), path)
        print0(f"wrote {path} ({n} notes, {int((row != PAD_ID).sum())} tokens)")
        paths.append(path)
    if args.audio:  # without a synthesizer: one warning, the MIDI files stand
        from aurl.evaluate.audio import render_all

        for wav in filter(None, render_all(paths)):
            print0(f"wrote {wav}")
    return paths


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        run(args)
    except UserError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
