"""Generated samples and the data they are compared with.

Samples: `num_samples` sequences of `length` new tokens after START, sampled with the KV cache (vae: z from
the prior), grammar-constrained unless `grammar` is False. The grammar check runs on the sampled tokens as
they are; notes still open when the length cut-off stops a sample are counted apart (`unclosed_at_cutoff`),
not as errors, unless the sample ended with END. Each sample is written as MIDI through
aurl.model.sampling.finalize + aurl.codec.decode (as `python -m aurl.generate` does); "valid MIDI" = the file
reads back with aurl's reader with >= 1 note.

Data excerpts: the validation pieces cut to the token length of a sample, so that length-dependent metrics
(pitch range, ...) compare like with like.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aurl import codec, grammar, vocab

if TYPE_CHECKING:
    from aurl.evaluate.config import EvalConfig


def data_excerpts(cache, length: int, max_excerpts: int) -> list:
    """Decoded excerpts of the validation pieces, each the token length of a sample (START + length).

    Tails shorter than half that are left out. An excerpt from inside a piece starts with the tempo in force
    there (tempo is written only on change) and without its leading time shifts (a sample's first note
    comes right after START, too).
    """
    spans = []
    for piece in cache.val_pieces:
        n = int(piece["length"])
        # a short tail would be an unfair comparison with full-length samples: keep it only if it is all
        spans += [(piece, s) for s in range(0, max(n - 1, 1), length + 1) if s == 0 or n - s > (length + 1) // 2]
    if len(spans) > max_excerpts:  # spread evenly, deterministic
        spans = [spans[i] for i in np.linspace(0, len(spans) - 1, max_excerpts).round().astype(int)]
    out = []
    for piece, s in spans:
        toks = np.asarray(cache.tokens(piece)).astype(np.int64)
        chunk = toks[s : s + length + 1]
        if s > 0:
            tempo = toks[:s][vocab.KIND_OF_ID[toks[:s]] == vocab.KIND_NAMES.index("tempo")]
            kinds = vocab.KIND_OF_ID[chunk]
            lead = int(np.argmax(kinds != vocab.KIND_NAMES.index("time_shift"))) if len(chunk) else 0
            chunk = np.concatenate([tempo[-1:], chunk[lead:]])
        out.append(codec.decode(chunk))
    return out


def _sample_report(rows: list[list[int]]) -> tuple[dict, list]:
    """Grammar figures of raw sample rows, and the finalized tokens of each row."""
    from aurl.model.sampling import finalize

    totals: dict[str, int] = {}
    cutoff_open = tokens = clean = final_errors = 0
    finalized = []
    for row in rows:
        ended = vocab.END_ID in row
        body = row[: row.index(vocab.END_ID) + 1] if ended else row
        errs = grammar.grammar_errors(body)
        if not ended:  # cut off by the length budget: open notes are not the model's mistake
            cutoff_open += errs.pop("unclosed_notes")
        for k, v in errs.items():
            totals[k] = totals.get(k, 0) + v
        clean += sum(errs.values()) == 0
        tokens += max(1, len(body) - 1)  # generated tokens (START was the prompt)
        fin = finalize(row)
        final_errors += sum(grammar.grammar_errors(fin).values())
        finalized.append(fin)
    n_err = sum(totals.values())
    return {
        "grammar_errors": totals,
        "grammar_error_rate": n_err / max(tokens, 1),
        "grammar_clean_share": clean / max(len(rows), 1),
        "unclosed_at_cutoff": cutoff_open,
        "finalized_grammar_errors": final_errors,
        "generated_tokens": tokens,
    }, finalized


def generate_samples(model, cfg: EvalConfig, device, context: int | None = None) -> list[list[int]]:
    """Raw token rows (START + up to `length` tokens) sampled with the KV cache."""
    import torch

    from aurl.model.sampling import generate, make_generator

    gen = make_generator(cfg.seed, device)
    prompt = torch.full((cfg.num_samples, 1), vocab.START_ID, dtype=torch.long)
    rows = []
    for b in range(0, cfg.num_samples, 16):  # bounded memory for large sample counts
        out = generate(model, prompt[b : b + 16], cfg.length, temperature=cfg.temperature, top_k=cfg.top_k,
                       top_p=cfg.top_p, generator=gen, stop_at_end=False, grammar=cfg.grammar,
                       context=context).cpu()
        for row in out.tolist():
            while row and row[-1] == vocab.PAD_ID:
                row.pop()
            rows.append(row)
    return rows


def _write_and_check(score, path: Path) -> bool:
    from aurl.data.midi_io import MidiReadError, read_midi, write_midi

    try:
        write_midi(score, path)
        return read_midi(path).num_notes > 0
    except (MidiReadError, OSError, ValueError):
        return False
