"""aurl.evaluate.likelihood: the validation windows of the evaluation and their NLL. (The NLL against the
model's own loss on a real cache: test_evaluate.py; against the trainer's validation: test_vae.py.)"""

from __future__ import annotations

import torch
from test_vaegan import _walker_sounding, tiny

from aurl.model import MusicTransformerVAEGAN


def test_evaluation_windows_hand_the_sounding_state_to_the_model():
    """aurl.evaluate cuts validation pieces into raw windows: each comes with the pitches sounding before its
    cut (the Walker's state there), and the validation NLL is the decoder's CE given that state (as
    generation hands it over when its context slides), not the CE of a window that starts silent."""
    from types import SimpleNamespace

    import numpy as np
    from midi_factory import random_score

    from aurl import codec
    from aurl.evaluate.likelihood import _padded_batches, _windows, likelihood_figures

    pieces = [codec.encode(random_score(seed, n_notes=60, n_programs=1)).astype(np.int64) for seed in (7, 8)]
    cache = SimpleNamespace(val_pieces=[0, 1], tokens=lambda i: pieces[i])  # the two calls _windows makes
    windows = _windows(cache, 40, 0)
    starts = [(i, s) for i, p in enumerate(pieces) for s in range(0, len(p) - 1, 40) if len(p[s : s + 40]) >= 2]
    assert len(windows) == len(starts) > 4
    handed = 0
    for (w, before), (i, s) in zip(windows, starts, strict=True):
        ref = _walker_sounding(pieces[i][:s].tolist())[-1] if s else torch.zeros(88, dtype=torch.bool)
        assert np.array_equal(w, pieces[i][s : s + 40]) and np.array_equal(before, ref.numpy())
        handed += int(before.any())
    assert handed > 0
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer", sounding_embedding=True)).eval()
    with torch.no_grad():
        model.sound_proj.weight.normal_(0, 0.5)
    got = likelihood_figures(model, _padded_batches(windows, 3), 0, "cpu")
    silent = likelihood_figures(model, ((ids, mask) for ids, mask, _ in _padded_batches(windows, 3)), 0, "cpu")
    ce = n = 0.0
    with torch.no_grad():
        for w, before in windows:
            ids = torch.from_numpy(w)[None]
            logits = model.decode(ids[:, :-1], sounding=torch.from_numpy(before)[None])
            ce += float(torch.nn.functional.cross_entropy(logits[0], ids[0, 1:], reduction="sum"))
            n += len(w) - 1
    assert got["tokens"] == n and abs(got["loss"] - ce / n) < 1e-5  # float32 vs float64 sums: 3e-8 measured
    assert abs(silent["loss"] - got["loss"]) > 1e-4  # 1.4e-3 measured: the state changes the NLL


def test_a_token_budget_takes_exactly_that_many_targets_spread_over_the_split_and_counts_notes_and_seconds():
    """max_val_tokens=130 over two pieces: the windows hold exactly 130 targets and come from both pieces (the
    budget is spread over the split, not spent on its first piece); the notes are the NOTE_ON targets and the
    seconds the targets' time shifts, counted here token by token. Mutations: the last window cut one token
    short -> fewer targets, fails; the first k windows taken instead of k spread ones -> one piece only, fails;
    note_off counted as the notes -> fails; seconds from the inputs, not the targets -> fails."""
    from types import SimpleNamespace

    import numpy as np
    from midi_factory import random_score

    from aurl import codec, vocab
    from aurl.evaluate.likelihood import _padded_batches, _windows, likelihood_figures

    pieces = [codec.encode(random_score(seed, n_notes=60, n_programs=1)).astype(np.int64) for seed in (7, 8)]
    cache = SimpleNamespace(val_pieces=[0, 1], tokens=lambda i: pieces[i])
    every = _windows(cache, 40, 0)
    assert sum(len(w) - 1 for w, _ in every) > 300  # the budget takes a part of the split
    kept = _windows(cache, 40, 130)
    assert sum(len(w) - 1 for w, _ in kept) == 130
    whose = [next(i for i, p in enumerate(pieces) if any(np.array_equal(w, p[s : s + len(w)])
                                                         for s in range(0, len(p), 40))) for w, _ in kept]
    assert set(whose) == {0, 1}, whose
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer", sounding_embedding=True)).eval()
    got = likelihood_figures(model, _padded_batches(kept, 2), 0, "cpu")
    note_on, targets = vocab.KIND_NAMES.index("note_on"), [int(t) for w, _ in kept for t in w[1:]]
    assert got["tokens"] == len(targets) == 130
    kinds = [vocab.KIND_OF_ID[t] for t in targets]
    assert kinds.count(note_on) != kinds.count(vocab.KIND_NAMES.index("note_off"))  # (23 vs 22) tells them apart
    assert got["notes"] == kinds.count(note_on) > 0
    steps = sum(int(vocab.shift_steps(np.array([t]))[0]) for t in targets)
    inputs = [int(t) for w, _ in kept for t in w[:-1]]
    assert steps != sum(int(vocab.shift_steps(np.array([t]))[0]) for t in inputs)  # (897 vs 886) tells them apart
    assert steps > 0 and got["seconds"] == steps * vocab.STEP_SECONDS
