"""aurl.evaluate.samples: the grammar report of generated rows, which tells notes left open by the length
cut-off from real errors. (The data excerpts, on a real cache: test_evaluate.py.)"""

from __future__ import annotations

import pytest

from aurl import grammar, vocab
from aurl.evaluate.samples import _sample_report


def test_sample_grammar_report_separates_the_cutoff():
    on, off = vocab.note_on_id(60), vocab.note_off_id(60)
    shift = vocab.time_shift_id(8)
    cut = [vocab.START_ID, on, shift]  # cut off by the length budget: the open note is not an error
    ended = [vocab.START_ID, on, shift, vocab.END_ID, vocab.PAD_ID]  # ended with the note open: an error
    bad = [vocab.START_ID, off, on, on, shift, off]
    report, finalized = _sample_report([cut, ended, bad])
    assert report["unclosed_at_cutoff"] == 1
    assert report["grammar_errors"]["unclosed_notes"] == 1
    assert report["grammar_errors"]["note_off_without_on"] == 1
    assert report["grammar_errors"]["duplicate_note_on"] == 1
    assert report["grammar_clean_share"] == pytest.approx(1 / 3)
    assert report["finalized_grammar_errors"] == 0
    assert all(sum(grammar.grammar_errors(f).values()) == 0 for f in finalized)
