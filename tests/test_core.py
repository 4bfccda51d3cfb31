"""aurl.evaluate.core: evaluate_model feeds the likelihood at most the trained window and copies `info` into
the result; the result becomes strict JSON (NaN and inf as null, numpy scalars as Python). (The whole
evaluation, samples, pictures and the command, on a real run folder: test_evaluate.py.)"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
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
