"""The evaluation result (aurl.evaluate.core.evaluate_model) as a few readable tables."""

from __future__ import annotations

import math
from pathlib import Path

from aurl.evaluate.metrics import METRIC_NAMES


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def format_report(result: dict) -> str:
    """The result of evaluate_model as a few readable tables."""
    lines = []
    head = f"checkpoint {result.get('checkpoint', '(in memory)')}  mode {result.get('mode')}"
    if result.get("stage") is not None or result.get("step") is not None:
        head += f"  stage {result.get('stage')}  step {result.get('step')}"
    lines.append(head)
    v = result["validation"]
    bound = " (negative ELBO: an upper bound)" if v["kind"] == "elbo_bound" else ""
    lines += [
        f"validation: {v['pieces']} pieces, {v['windows']} windows, {v['tokens']} tokens, {v['notes']} notes, "
        f"{v['seconds']:.1f} s of music{bound}",
        f"  NLL per token    {_fmt(v['nll_per_token'], 4)} nats"
        + (f"   (recon {_fmt(v['recon_per_token'], 4)} + KL {_fmt(v['kl_per_token'], 4)})" if bound else ""),
        *([f"  latent           {v['latent']['active_units']}/{v['latent']['latent_dim']} active units, "
           f"z-swap gap {_fmt(v['latent']['zswap_gap'], 4)} nats/token (> 0: z carries its window)"]
          if v.get("latent") else []),
        *([f"  discriminator    accuracy on real windows {_fmt(v['discriminator']['acc_real'], 2)}, "
           f"on generated {_fmt(v['discriminator']['acc_fake'], 2)}"] if v.get("discriminator") else []),
        f"  NLL per note     {_fmt(v['nll_per_note'], 3)} nats",
        f"  bits per second  {_fmt(v['bits_per_second'], 1)}",
    ]
    s = result.get("samples")
    if s:
        errs = ", ".join(f"{k} {n}" for k, n in s["grammar_errors"].items() if n) or "none"
        lines += [
            f"samples: {s['num']} x {result['eval_config']['length']} tokens (seed {result['eval_config']['seed']}, "
            f"T {result['eval_config']['temperature']})  mean {s['mean_notes']:.0f} notes, {s['mean_seconds']:.1f} s",
            f"  valid MIDI       {s['valid_midi_share'] * 100:.0f} %",
            f"  grammar errors   {s['grammar_error_rate'] * 100:.2f} % of tokens ({errs}"
            f"{'' if result['eval_config'].get('grammar', True) else ', unconstrained sampling'}); "
            f"clean samples {s['grammar_clean_share'] * 100:.0f} %; notes open at the length cut-off "
            f"{s['unclosed_at_cutoff']} (closed in the MIDI)",
            "",
            f"{'metric':<22}{'data':>10}{'samples':>10}{'overlap':>10}",
        ]
        for name in METRIC_NAMES:
            m = result["metrics"][name]
            lines.append(f"{name:<22}{_fmt(m['data']):>10}{_fmt(m['samples']):>10}{_fmt(m['overlap'], 2):>10}")
        lines.append(f"(data: {result['data_excerpts']} validation excerpts of the same token length)")
        bar = result.get("quality_bar", {})
        lines.append("quality bar: " + ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in bar.items()))
    if result.get("pictures"):
        lines.append(f"pictures: {len(result['pictures'])} PNG in {Path(result['pictures'][0]).parent}")
    if result.get("json"):
        lines.append(f"json: {result['json']}")
    return "\n".join(lines)
