"""aurl.evaluate.text.format_report: the evaluation result as tables; an undefined figure (NaN, inf, None)
reads "n/a", a VAE's NLL says it is a bound and shows its two parts, and every music metric gets its row."""

from __future__ import annotations

import math

from aurl.evaluate.metrics import METRIC_NAMES
from aurl.evaluate.text import format_report


def _result(kind: str, samples: bool) -> dict:
    validation = {"kind": kind, "pieces": 2, "windows": 3, "tokens": 40, "notes": 0, "seconds": 1.5,
                  "nll_per_token": 2.5, "recon_per_token": 2.25, "kl_per_token": 0.25,
                  "nll_per_note": math.nan, "bits_per_second": math.inf}
    result = {"checkpoint": "run/best.pt", "mode": "vae", "stage": "stage2", "step": 7, "validation": validation}
    if samples:
        result |= {
            "eval_config": {"length": 48, "seed": 1, "temperature": 1.0, "grammar": True},
            "samples": {"num": 3, "mean_notes": 12.0, "mean_seconds": 4.0, "valid_midi_share": 1.0,
                        "grammar_errors": {"unclosed_notes": 2, "duplicate_note_on": 0},
                        "grammar_error_rate": 0.01, "grammar_clean_share": 2 / 3, "unclosed_at_cutoff": 1},
            "metrics": {name: {"data": 0.5, "samples": None, "overlap": 0.25} for name in METRIC_NAMES},
            "data_excerpts": 5,
            "quality_bar": {"all_valid_midi": True, "zero_grammar_errors": False},
        }
    return result


def test_undefined_figures_read_n_a_and_a_bound_says_so():
    """Mutation: _fmt without its finiteness check (prints "nan" and "inf") -> fails."""
    lines = format_report(_result("elbo_bound", samples=False)).splitlines()
    assert lines[0] == "checkpoint run/best.pt  mode vae  stage stage2  step 7"
    assert lines[1].endswith("(negative ELBO: an upper bound)")
    assert "NLL per token    2.5000 nats   (recon 2.2500 + KL 0.2500)" in lines[2]
    assert lines[3:] == ["  NLL per note     n/a nats", "  bits per second  n/a"]
    exact = format_report(_result("exact", samples=False))
    assert "upper bound" not in exact and "recon" not in exact


def test_samples_get_their_errors_and_one_row_per_metric():
    text = format_report(_result("exact", samples=True))
    assert "samples: 3 x 48 tokens (seed 1, T 1.0)" in text
    assert "(unclosed_notes 2); clean samples 67 %; notes open at the length cut-off 1" in text
    rows = [line for line in text.splitlines() if line.split()[:1] and line.split()[0] in METRIC_NAMES]
    assert len(rows) == len(METRIC_NAMES) > 5 and all(row.split()[1:] == ["0.500", "n/a", "0.25"] for row in rows)
    assert text.splitlines()[-1] == "quality bar: all_valid_midi yes, zero_grammar_errors NO"


def test_the_latent_the_discriminator_and_unconstrained_sampling_get_their_say():
    """Mutations: the latent line left out -> fails; the ", unconstrained sampling" note left out -> fails
    (grammar errors from a sampler without its grammar are not the model's alone)."""
    result = _result("elbo_bound", samples=True)
    result["validation"] |= {"latent": {"active_units": 12, "latent_dim": 16, "zswap_gap": 0.125},
                             "discriminator": {"acc_real": 0.75, "acc_fake": 0.5}}
    result["eval_config"]["grammar"] = False
    lines = format_report(result).splitlines()
    assert lines[3] == "  latent           12/16 active units, z-swap gap 0.1250 nats/token (> 0: z carries its window)"
    assert lines[4] == "  discriminator    accuracy on real windows 0.75, on generated 0.50"
    assert "(unclosed_notes 2, unconstrained sampling); clean samples" in format_report(result)


def test_the_pictures_and_the_json_are_named_last():
    result = _result("exact", samples=True) | {"pictures": ["out/eval/a.png", "out/eval/b.png"],
                                               "json": "out/eval/eval.json"}
    assert format_report(result).splitlines()[-2:] == ["pictures: 2 PNG in out/eval", "json: out/eval/eval.json"]
    assert format_report(_result("exact", samples=True)).splitlines()[-1].startswith("quality bar:")
