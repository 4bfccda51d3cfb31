"""The sounding-notes output bias (model.sounding_output_bias): the note state shifts the note-event logits.

Why: the sounding-notes input (aurl.model.sounding) tells the decoder which pitches sound, but a small model
trained for a few hundred steps still puts a few percent of its mass on closing a pitch that is not sounding
(README, quality bar: most raw-sampling errors at temperature 1.0). The tied output head scores NOTE_OFF p by
a dot product with one embedding row, so "p is silent" must travel through every layer to reach it. Here the
same multi-hot reaches the head directly, in the manner of a pointer or copy bias:

    logit[NOTE_ON p]  += GAIN * on_sounding * sounding_p
    logit[NOTE_OFF p] += GAIN * off_silent  * (1 - sounding_p)

with the two learned scalars (on_sounding, off_silent) = bias[0], bias[1], shared by all pitches. They start
at zero, so an untrained model (or a model file without the key, transferred into one with it) computes
exactly what it did without the bias. It is learned from data, not a mask: the training data never hold a
NOTE_ON of a sounding pitch or a NOTE_OFF of a silent one, so likelihood training drives both scalars
negative, as far as the steps allow; raw sampling (aurl.evaluate --no-grammar) then still samples the
model's own distribution. The multi-hot is instrument-blind, as the input is, while the grammar scopes
notes by (instrument, pitch): with the same pitch on two instruments, the bias follows that pitch's latest
event (it can spare a NOTE_OFF the grammar forbids, or penalize one it allows); with one instrument, as in
the chorales, the two agree exactly.

GAIN: Adam moves a parameter by about lr per step whatever its gradient, so a plain scalar would move the
logits by at most ~0.2 nats over the quickstart's stages (lr 1e-3 for 300 steps, with warm-up and decay).
Stored in units of 1/GAIN nats, each step moves the shift GAIN times further (a per-parameter learning-rate
multiplier kept inside the model, which knows nothing of the optimizer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aurl.vocab import NOTE_OFF_OFFSET, NOTE_ON_OFFSET, NUM_PITCHES, VOCAB_SIZE

GAIN = 32.0

assert NOTE_OFF_OFFSET == NOTE_ON_OFFSET + NUM_PITCHES  # the two note-event blocks are one slice of the head


def sounding_logit_bias(states: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The shift [..., VOCAB_SIZE] (dtype) to add to the logits, from the pitches sounding after each
    position [..., 88] bool and the learned (on_sounding, off_silent) bias [2]. Out of place and shape-static
    (torch.compile, autograd)."""
    s = states.to(dtype)
    b = (bias * GAIN).to(dtype)
    notes = torch.cat([b[0] * s, b[1] * (1 - s)], dim=-1)  # NOTE_ON block, then NOTE_OFF block
    return F.pad(notes, (NOTE_ON_OFFSET, VOCAB_SIZE - NOTE_ON_OFFSET - 2 * NUM_PITCHES))
