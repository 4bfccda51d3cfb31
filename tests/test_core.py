"""aurl.evaluate.core: evaluate_model feeds the likelihood at most the trained window and copies `info` into
the result; the samples' figures, metrics table and quality bar against the data excerpts; the tempo
tolerance; the result becomes strict JSON (NaN and inf as null, numpy scalars as Python). (The whole
evaluation, samples, pictures and the command, on a real run folder: test_evaluate.py.)"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from midi_factory import random_score
from test_vaegan import tiny

from aurl import codec
from aurl.evaluate import core, samples
from aurl.evaluate.config import EvalConfig
from aurl.evaluate.core import _jsonable, evaluate_model
from aurl.evaluate.likelihood import validation_nll
from aurl.model import MusicTransformerVAEGAN


def test_the_likelihood_sees_the_context_given_never_more_than_max_seq_len(monkeypatch):
    """Mutations: evaluate_model calling validation_nll without `context` (windows of max_seq_len) -> fails;
    the samples generated without `context` (a trained window of 20 sampled with 64) -> fails."""
    pieces = [codec.encode(random_score(seed, n_notes=40, n_programs=1)).astype(np.int64) for seed in (3, 4)]
    rows = [{"index": i, "length": len(p)} for i, p in enumerate(pieces)]  # a manifest's rows, as the cache's
    cache = SimpleNamespace(val_pieces=rows, tokens=lambda row: pieces[row["index"]], cache_dir="(in memory)")
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer")).eval()  # max_seq_len 64
    cfg = EvalConfig(num_samples=0)
    for context, used in ((20, 20), (None, 64), (500, 64)):
        result = evaluate_model(model, cache, cfg, info={"checkpoint": "x.pt"}, context=context)
        assert result["context"] == used and result["checkpoint"] == "x.pt" and "samples" not in result
        assert result["validation"] == validation_nll(model, cache, cfg.validate(), "cpu", used)
        assert result["validation"]["windows"] == sum(math.ceil((len(p) - 1) / used) for p in pieces)

    sampled_with = []

    def generate_samples(model, cfg, device, context=None):
        sampled_with.append(context)
        return samples.generate_samples(model, cfg, device, context)

    monkeypatch.setattr(core, "generate_samples", generate_samples)
    result = evaluate_model(model, cache, EvalConfig(num_samples=1, length=8, pictures=False), context=20)
    assert sampled_with == [20] and result["samples"]["num"] == 1


def test_the_result_becomes_strict_json():
    """Mutation: _jsonable passing non-finite floats through -> json.dumps(allow_nan=False) fails."""
    result = {"a": math.nan, "b": [np.float32(1.5), np.int64(3), np.bool_(True), math.inf], 4: {"c": (1, "x")}}
    text = json.dumps(_jsonable(result), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.5, 3, True, None], "4": {"c": [1, "x"]}}


def _c_major_piece(seed: int) -> np.ndarray:
    """60 notes from the C major scale around middle C at 100 BPM, 1 to 3 eighth notes (0.3 s) apart: scale
    consistency 1; 100 BPM is no tempo bin's value, so the excerpts' beat metrics need the tempo refinement."""
    from aurl.score import Note, Score

    rng = np.random.default_rng(seed)
    pitches = 60 + rng.choice([0, 2, 4, 5, 7, 9, 11], 60)
    onsets = 0.3 * np.cumsum(rng.choice([1, 2, 3], 60))
    notes = [Note(int(p), float(t), float(t) + 0.27, 80) for p, t in zip(pitches, onsets, strict=True)]
    return codec.encode(Score.from_notes(notes, tempos=((0.0, 100.0),))).astype(np.int64)


def test_the_samples_figures_and_quality_bar_compare_the_samples_with_the_data():
    """evaluate_model's samples part, recomputed from the same parts (the same seed gives the same rows): the
    metrics table has the data excerpts in "data" and the samples in "samples", for all 7 metrics (the data's
    beat metrics on the refined tempo); the figures are the samples' own; max_data_excerpts caps the excerpts;
    the quality bar applies its stated tolerances. An untrained model sampled without the grammar (seed 2)
    writes errors and strays from C major: pitch-class entropy 0.63 bits off, scale consistency 0.12 off
    (measured), so no criterion but valid MIDI is met; 2-token samples are mostly empty, so that one fails too."""
    from aurl.evaluate.metrics import METRIC_NAMES, compare_metrics, compute_metrics
    from aurl.model.sampling import finalize

    pieces = [_c_major_piece(seed) for seed in (1, 2, 3)]
    rows = [{"index": i, "length": len(p)} for i, p in enumerate(pieces)]
    cache = SimpleNamespace(val_pieces=rows, tokens=lambda row: pieces[row["index"]], cache_dir="(in memory)")
    torch.manual_seed(0)
    model = MusicTransformerVAEGAN(tiny("transformer")).eval()
    cfg = EvalConfig(num_samples=6, length=48, seed=2, grammar=False, pictures=False, max_data_excerpts=4)
    result = evaluate_model(model, cache, cfg)

    scores = [codec.decode(finalize(r)) for r in samples.generate_samples(model, cfg.validate(), "cpu", 64)]
    excerpts = samples.data_excerpts(cache, 48, 4)
    assert len(scores) == result["samples"]["num"] == 6
    assert result["data_excerpts"] == len(excerpts) == 4 < len(samples.data_excerpts(cache, 48, 1000))
    s = result["samples"]
    assert s["mean_notes"] == np.mean([x.num_notes for x in scores]) > 0
    assert s["valid_midi_share"] == np.mean([x.num_notes > 0 for x in scores]) == 1.0
    assert sum(s["grammar_errors"].values()) > 0
    data_m = [compute_metrics(x, tempo_tolerance=core.TEMPO_TOLERANCE) for x in excerpts]
    samp_m = [compute_metrics(x, tempo_tolerance=core.TEMPO_TOLERANCE) for x in scores]
    expected = compare_metrics(data_m, samp_m)
    compared = 0
    for name in METRIC_NAMES:
        for column in ("data", "samples", "overlap"):
            np.testing.assert_equal(result["metrics"][name][column], expected[name][column], err_msg=name)
            compared += 1
    assert compared == 21
    ent, scale = expected["pitch_class_entropy"], expected["scale_consistency"]
    assert abs(ent["samples"] - ent["data"]) > 0.3 + 0.3 and abs(scale["samples"] - scale["data"]) > 0.1 + 0.01
    assert result["quality_bar"] == {"all_valid_midi": True, "zero_grammar_errors": False,
                                     "entropy_within_0.3_bits": False, "scale_consistency_within_0.1": False}
    short = evaluate_model(model, cache, EvalConfig(num_samples=6, length=2, grammar=False, pictures=False))
    assert short["samples"]["valid_midi_share"] < 1 and short["quality_bar"]["all_valid_midi"] is False


def test_the_tempo_tolerance_is_half_a_tempo_bin():
    """A decoded tempo is its bin's representative; the original lay at most half a (geometric) bin away:
    tempo_of_bin(k + 0.5) / tempo_of_bin(k) - 1 = 8^(1/62) - 1 = 3.41 %, the same for every bin."""
    from aurl import vocab

    ratios = vocab.tempo_of_bin(np.arange(31) + 0.5) / vocab.tempo_of_bin(np.arange(31)) - 1.0
    assert len(ratios) == 31 and np.allclose(ratios, core.TEMPO_TOLERANCE, rtol=1e-12, atol=0)
    assert core.TEMPO_TOLERANCE == pytest.approx(8 ** (1 / 62) - 1, rel=1e-12)
