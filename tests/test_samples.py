"""aurl.evaluate.samples: the grammar report of generated rows, which tells notes left open by the length
cut-off from real errors; excerpts cut from inside a piece; what counts as valid MIDI. (The data excerpts, on
a real cache: test_evaluate.py.)"""

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
    # the error rate is per generated token: the prompt's START and what follows an END do not count
    assert report["generated_tokens"] == 2 + 3 + 5
    assert report["grammar_error_rate"] == pytest.approx(sum(report["grammar_errors"].values()) / 10)


def test_an_excerpt_from_inside_a_piece_starts_with_its_first_event():
    """An excerpt cut inside a piece drops the time shifts it starts with (a sample's first event comes right
    after START) and restates the tempo in force: its first note starts at 0 s. Here 20 legato notes, one every
    0.25 s, at 90 BPM (65 tokens): 8 excerpts of START + 7 tokens, cut every 8; 3 of the 7 cut from inside
    start on a time shift, and every excerpt starts its first note at 0."""
    from types import SimpleNamespace

    import numpy as np

    from aurl import codec
    from aurl.evaluate.samples import data_excerpts
    from aurl.score import Note, Score

    notes = [Note(60 + i % 12, 0.25 * i, 0.25 * i + 0.25, 80) for i in range(20)]
    toks = codec.encode(Score.from_notes(notes, tempos=((0.0, 90.0),))).astype(np.int64)
    cache = SimpleNamespace(val_pieces=[{"length": len(toks)}], tokens=lambda row: toks)
    excerpts = data_excerpts(cache, 7, 100)
    starts = list(range(0, len(toks) - 1, 8))
    assert len(toks) == 65 and len(excerpts) == len(starts) == 8
    assert [vocab.token_kind(toks[s]) for s in starts[1:]].count("time_shift") == 3  # the case at stake
    for s, ex in zip(starts, excerpts, strict=True):
        assert ex.num_notes >= 2 and ex.start.min() == 0.0, s
        assert ex.tempo_bpm.tolist() == [pytest.approx(vocab.tempo_of_bin(vocab.tempo_bin(90.0)))]


def test_a_sample_is_valid_midi_when_its_file_reads_back_with_notes(tmp_path):
    from aurl.evaluate.samples import _write_and_check
    from aurl.score import Note, Score

    assert _write_and_check(Score.from_notes([Note(60, 0.0, 0.5, 80)]), tmp_path / "one.mid")
    assert (tmp_path / "one.mid").is_file()
    assert not _write_and_check(Score(), tmp_path / "none.mid")  # written, but no note to read back
