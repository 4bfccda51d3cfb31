"""The token cache built from a MIDI folder (aurl.data.cache): contents, incrementality, bad input,
interruption, the split of a build, the bundled corpus, the CLI. (The scan and the diff: test_folder_diff.py;
reader isolation: test_reader_pool.py; the manifest: test_manifest.py; the split rule: test_token_cache.py.)"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from midi_factory import write_simple_midi

from aurl import codec, vocab
from aurl.console import UserError
from aurl.data.augment import AugmentConfig
from aurl.data.cache import build, ensure_cache
from aurl.data.manifest import load as load_manifest
from aurl.data.midi_io import read_midi
from aurl.data.token_cache import TokenCache

TESTS_DIR = Path(__file__).parent
REPO = TESTS_DIR.parent


def _folder(root: Path, n: int = 6) -> Path:
    data = root / "midi"
    for i in range(n):
        sub = "sub/" if i % 3 == 0 else ""
        suffix = ".MIDI" if i == 1 else ".mid"
        write_simple_midi(data / f"{sub}piece_{i:02d}{suffix}", seed=i, n_notes=30 + i)
    (data / "notes.txt").write_text("not a midi file and not .mid: ignored")
    return data


def _build(data, cache, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return build(data, cache, **kw)


def test_build_stores_exactly_the_encoded_tokens(tmp_path):
    data = _folder(tmp_path)
    s = _build(data, tmp_path / "cache", val_fraction=0.3, split_seed=1)
    assert (s.files, s.pieces, s.tokenized, s.skipped) == (6, 6, 6, [])
    tc = TokenCache.open(tmp_path / "cache")
    assert tc.vocab_hash == vocab.vocab_hash() and len(tc.pieces) == 6
    m = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    for p in tc.pieces:
        assert {"path", "sha256", "shard", "offset", "length", "notes", "duration_s", "split"} <= set(p)
        np.testing.assert_array_equal(tc.tokens(p), codec.encode(read_midi(data / p["path"])))
    assert m["options"]["val_fraction"] == 0.3 and m["options"]["split_seed"] == 1
    assert s.tokens == sum(p["length"] for p in tc.pieces)
    assert "sub/piece_00.mid" in {p["path"] for p in tc.pieces} and "piece_01.MIDI" in {p["path"] for p in tc.pieces}


def _shards(cache: Path) -> set[str]:
    return {f.name for f in (cache / "shards").glob("*.bin")}


def test_incremental_unchanged_changed_added_removed(tmp_path):
    """Mutation: _reclaim_shards deleting nothing -> the two shards of the changed and the removed file stay,
    and the shard check fails."""
    data, cache = _folder(tmp_path), tmp_path / "cache"
    _build(data, cache, flush_seconds=0)  # a flush (a shard) per file: a changed or removed file frees its shard
    assert len(_shards(cache)) == 6
    fp0 = TokenCache.open(cache).fingerprint
    s = _build(data, cache)
    assert (s.tokenized, s.reused, s.removed) == (0, 6, 0)
    assert TokenCache.open(cache).fingerprint == fp0

    os.utime(data / "piece_02.mid", ns=(1, 1))  # touched, same content: hashed, not re-tokenized
    s = _build(data, cache)
    assert (s.tokenized, s.reused) == (0, 6) and TokenCache.open(cache).fingerprint == fp0

    write_simple_midi(data / "piece_02.mid", seed=99, n_notes=50)  # changed
    write_simple_midi(data / "new.mid", seed=100)  # added
    (data / "piece_04.mid").unlink()  # removed
    s = _build(data, cache)
    assert (s.tokenized, s.reused, s.removed, s.pieces) == (2, 4, 1, 6)
    tc = TokenCache.open(cache)
    assert tc.fingerprint != fp0 and "piece_04.mid" not in {p["path"] for p in tc.pieces}
    for p in tc.pieces:  # old shards still serve the unchanged pieces; the changed one is new
        np.testing.assert_array_equal(tc.tokens(p), codec.encode(read_midi(data / p["path"])))
    assert _shards(cache) == {p["shard"] for p in tc.pieces} and len(_shards(cache)) == 5  # 4 kept, 1 new


def test_a_file_of_the_same_name_size_and_mtime_in_another_folder_is_read_again(tmp_path):
    """Size and mtime vouch for a file only in the folder the cache was built from: built from another folder,
    every file is hashed, so a file with another pitch (same size, same mtime) is tokenized again.
    Mutation: diff_folder trusting size and mtime whatever the folder (same_dir ignored) -> the old tokens
    are kept and the comparison fails."""
    from midi_factory import make_pretty_midi

    a, b, cache = tmp_path / "a", tmp_path / "b", tmp_path / "cache"
    for folder, pitch in ((a, 60), (b, 62)):
        folder.mkdir()
        for name in ("x.mid", "y.mid"):
            make_pretty_midi([(pitch, 0, 1, 80), (pitch + 4, 1, 2, 80)]).write(str(folder / name))
            os.utime(folder / name, ns=(10**18, 10**18))
    assert (a / "x.mid").stat().st_size == (b / "x.mid").stat().st_size
    assert (a / "x.mid").read_bytes() != (b / "x.mid").read_bytes()
    _build(a, cache)
    s = _build(b, cache)
    assert (s.tokenized, s.reused) == (2, 0)
    tc = TokenCache.open(cache)
    assert len(tc.pieces) == 2
    for p in tc.pieces:
        np.testing.assert_array_equal(tc.tokens(p), codec.encode(read_midi(b / p["path"])))



def _bad_folder(root: Path) -> Path:
    data = _folder(root, n=2)
    ok = (data / "piece_01.MIDI").read_bytes()
    (data / "bad").mkdir()
    (data / "bad" / "empty.mid").write_bytes(b"")
    (data / "bad" / "text.mid").write_bytes(b"hello, I am not MIDI at all")
    (data / "bad" / "truncated.mid").write_bytes(ok[: len(ok) // 2])
    (data / "bad" / "tpq_zero.mid").write_bytes(ok[:12] + b"\x00\x00" + ok[14:])
    from midi_factory import make_pretty_midi

    make_pretty_midi([(60, 0, 1, 80), (60, 6 * 3600, 6 * 3600 + 1, 80)]).write(str(data / "bad" / "absurd.mid"))
    make_pretty_midi([(10, 0, 1, 80), (120, 0, 1, 80)]).write(str(data / "bad" / "out_of_range.mid"))
    return data


def test_bad_files_are_skipped_with_reasons_and_kept_in_the_manifest(tmp_path):
    data, cache = _bad_folder(tmp_path), tmp_path / "cache"
    s = _build(data, cache)
    reasons = dict(s.skipped)
    assert s.pieces == 2 and len(reasons) == 6 and s.new_skipped == 6  # (mutation: not counted -> fails)
    assert "empty" in reasons["bad/empty.mid"]
    assert "not a MIDI" in reasons["bad/text.mid"]
    assert "unreadable" in reasons["bad/truncated.mid"]
    assert "ticks per beat is 0" in reasons["bad/tpq_zero.mid"]
    assert "absurd length" in reasons["bad/absurd.mid"]
    assert "no usable notes (2 out of range)" in reasons["bad/out_of_range.mid"]
    assert {e["path"] for e in TokenCache.open(cache).manifest["skipped"]} == set(reasons)
    assert all(path in s.format() for path in reasons)
    s2 = _build(data, cache)  # unchanged bad files are not retried
    assert s2.tokenized == 0 and s2.new_skipped == 0 and dict(s2.skipped) == reasons


def test_no_usable_file_and_missing_folder_are_user_errors(tmp_path):
    data = tmp_path / "bad"
    data.mkdir()
    (data / "a.mid").write_bytes(b"junk")
    (data / "b.mid").write_bytes(b"")
    with pytest.raises(UserError, match=f"no usable MIDI file in {data}: 2 of 2 files skipped"):
        _build(data, tmp_path / "out" / "cache")
    assert not (tmp_path / "out").exists()  # the folders the build created are gone again
    (data / "a.mid").unlink()
    (data / "b.mid").unlink()
    with pytest.raises(UserError, match="it holds no .mid/.midi file"):
        _build(data, tmp_path / "out" / "cache")
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="not found"):
        _build(tmp_path / "nowhere", tmp_path / "cache")
    # the options, refused with the value (mutations: each check dropped -> its line fails)
    good = _folder(tmp_path / "good", n=1)
    for kw, said in (({"val_fraction": 1.0}, "val_fraction must be in [0, 1), got 1.0"),
                     ({"workers": -1}, "workers must be >= 0, got -1"),
                     ({"timeout_s": 0}, "timeout_s must be > 0 seconds, got 0")):
        with pytest.raises(UserError, match=re.escape(said)):
            _build(good, tmp_path / "opts", **kw)
    with pytest.raises(UserError, match="no token cache"):
        TokenCache.open(tmp_path / "nothing")


def test_cli_exit_codes_and_summary(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run([sys.executable, "-m", "aurl.data", "build", "--data", str(empty), "--cache",
                        str(tmp_path / "c"), "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and "no usable MIDI file" in r.stderr
    data = _bad_folder(tmp_path)
    r = subprocess.run([sys.executable, "-m", "aurl.data", "build", "--data", str(data), "--cache",
                        str(tmp_path / "c"), "--workers", "0", "--no-progress"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert "2 pieces" in r.stdout and "skipped files: 6" in r.stdout and "bad/text.mid: not a MIDI" in r.stdout
    r = subprocess.run([sys.executable, "-m", "aurl.data", "info", "--cache", str(tmp_path / "c"), "--json",
                        "--variety", "--seq-len", "32", "--epochs", "3"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["pieces"] == 2 and len(info["skipped"]) == 6
    assert info["variety"]["epochs"] == 3 and info["variety"]["augmented_fraction"] > 0
    coverage = info["variety"]["coverage"]  # per transform: configured probability and share of windows changed
    assert set(coverage) == {"transpose", "stretch", "velocity", "instrument", "swing", "humanize"}
    assert all(0 <= c["changed"] <= 1 and c["configured"] == getattr(AugmentConfig(), f"{name}_prob")
               for name, c in coverage.items())
    r = subprocess.run([sys.executable, "-m", "aurl.data", "info", "--cache", str(tmp_path / "c"), "--variety",
                        "--seq-len", "32", "--epochs", "1"], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and "velocity   configured 0.50  changed" in r.stdout, r.stdout + r.stderr


def _processes_mentioning(text: str) -> list[int]:
    """Pids whose environment mentions text (Linux): the build and its workers carry a marker variable."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                environ = (d / "environ").read_bytes()
            except OSError:
                continue
            if text.encode() in environ:
                pids.append(int(d.name))
    return pids


def test_killed_build_keeps_what_was_flushed_and_the_next_build_continues(tmp_path):
    data, cache = _folder(tmp_path, n=5), tmp_path / "cache"
    write_simple_midi(data / "sub" / "zz_last" / "hang.mid", seed=7)  # sorted last: the build blocks on it
    code = (
        "from aurl.data.cache import build; from midi_factory import crashing_reader; "
        f"build({str(data)!r}, {str(cache)!r}, workers=1, flush_seconds=0, progress=False, reader=crashing_reader)"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS_DIR}", "AURL_TEST_MARK": str(cache)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            m = load_manifest(cache)  # the snapshot with the journal the flushes appended
            if m is not None and len(m["pieces"]) == 5:
                break
            time.sleep(0.1)
        else:
            pytest.fail("the build never flushed its first pieces")
        proc.send_signal(signal.SIGKILL)  # kill -9 while the worker hangs on the last file
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(TokenCache.open(cache).pieces) == 5
    # the hung worker died with its parent (nothing is left behind reading the file)
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(cache)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_mentioning(str(cache))
    s = _build(data, cache)
    assert (s.tokenized, s.reused, s.pieces) == (1, 5, 6)
    fresh = _build(data, tmp_path / "fresh")
    assert fresh.pieces == 6 and TokenCache.open(cache).fingerprint == TokenCache.open(tmp_path / "fresh").fingerprint


def test_ctrl_c_flushes_what_was_tokenized(tmp_path):
    data, cache = _folder(tmp_path, n=4), tmp_path / "cache"
    hang = write_simple_midi(data / "sub" / "zz_last" / "hang.mid", seed=8)
    code = (  # no periodic flush at all: whatever lands in the manifest comes from the Ctrl-C path
        "from aurl.data.cache import build; from midi_factory import crashing_reader; "
        f"build({str(data)!r}, {str(cache)!r}, workers=1, flush_seconds=1e9, progress=False, reader=crashing_reader)"
    )
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS_DIR}"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not hang.with_suffix(".hanging").exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the build never reached the last file"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    assert len(TokenCache.open(cache).pieces) == 4


def test_built_split_is_disjoint_and_changes_without_retokenizing(tmp_path):
    data, cache = _folder(tmp_path, n=6), tmp_path / "cache"
    _build(data, cache, val_fraction=0.3, split_seed=0)
    tc = TokenCache.open(cache)
    train, val = {p["path"] for p in tc.train_pieces}, {p["path"] for p in tc.val_pieces}
    assert train and val and not train & val and len(train | val) == 6
    s = _build(data, cache, val_fraction=0.5, split_seed=1)
    assert s.tokenized == 0 and s.val_pieces >= 1


def test_ensure_cache_on_the_bundled_corpus_subset(tmp_path, monkeypatch):
    monkeypatch.setenv("AURL_CORPUS_DIR", str(tmp_path / "bach"))
    tc = ensure_cache(None, tmp_path / "cache", val_fraction=0.5, split_seed=0, workers=0, progress=False,
                      corpus_limit=2)
    assert len(tc.pieces) == 2 and len(tc.train_pieces) == 1 and len(tc.val_pieces) == 1
    assert all(p["path"].startswith("bwv") for p in tc.pieces)


def test_ensure_cache_reads_the_manifest_once_and_returns_what_open_reads(tmp_path, monkeypatch):
    """ensure_cache hands back the cache its build holds in memory instead of reading the manifest again
    (~0.6 s at 100,000 files): one read per call (the build's, of the old manifest), on a first build, an
    unchanged folder and a changed one, and the same cache as TokenCache.open reads from disk."""
    import aurl.data.manifest as manifest_io

    data, cache = _folder(tmp_path, n=5), tmp_path / "cache"
    (data / "broken.mid").write_bytes(b"MThd not really")
    reads = []
    real_load = manifest_io.load
    monkeypatch.setattr(manifest_io, "load", lambda *a, **kw: reads.append(a) or real_load(*a, **kw))
    compared = 0
    for change in (None, None, "piece_01.MIDI"):
        if change:
            (data / change).unlink()
            write_simple_midi(data / "added.mid", seed=9, n_notes=12)
        reads.clear()
        tc = ensure_cache(data, cache, val_fraction=0.4, split_seed=3, workers=0, progress=False)
        assert len(reads) == 1
        disk = TokenCache.open(cache)
        assert tc.fingerprint == disk.fingerprint
        assert tc.pieces == disk.pieces and tc.manifest["skipped"] == disk.manifest["skipped"]
        assert [p["path"] for p in tc.train_pieces] == [p["path"] for p in disk.train_pieces]
        assert [p["path"] for p in tc.val_pieces] == [p["path"] for p in disk.val_pieces]
        for p in tc.pieces:
            np.testing.assert_array_equal(tc.tokens(p), disk.tokens(p))
            compared += 1
        assert [s["path"] for s in tc.manifest["skipped"]] == ["broken.mid"]
    assert compared == 5 + 5 + 5  # five pieces each time (one gone, one added the third time)


def test_a_cache_of_the_previous_vocabulary_is_rebuilt_not_misread(tmp_path):
    """A cache built with vocabulary version 1 (drums dropped, NOTE_OFF by pitch alone): opening it is refused,
    and the next build tokenizes every file again with this vocabulary (nothing reused)."""
    from midi_factory import spec_hash, vocab_v1_spec

    data, cache = _folder(tmp_path, n=4), tmp_path / "cache"
    _build(data, cache)
    manifest = json.loads((cache / "manifest.json").read_text())
    old = vocab_v1_spec()
    assert spec_hash(old) != vocab.vocab_hash()
    (cache / "manifest.json").write_text(json.dumps({**manifest, "vocab_hash": spec_hash(old), "vocab_spec": old}))
    with pytest.raises(UserError, match="built with another vocabulary; rebuild it"):
        TokenCache.open(cache)
    s = _build(data, cache)
    assert (s.tokenized, s.reused, s.pieces) == (4, 0, 4)
    tc = TokenCache.open(cache)
    assert tc.vocab_hash == vocab.vocab_hash() and tc.manifest["vocab_spec"]["version"] == 2
    for p in tc.pieces:
        np.testing.assert_array_equal(tc.tokens(p), codec.encode(read_midi(data / p["path"])))


def test_summary_and_manifest_report_what_the_vocabulary_kept_per_file_and_in_total(tmp_path):
    """notes kept (drums among them), merged, truncated and out of range: per file in the manifest (and in
    `info --json`), summed in the build summary and in `info`."""
    from midi_factory import arrangement_midi

    data, cache = tmp_path / "midi", tmp_path / "cache"
    data.mkdir()
    for seed in range(2):
        arrangement_midi(seed, "pop", bars=8, same_instrument_overlaps=True).write(str(data / f"band{seed}.mid"))
    s = _build(data, cache)
    want = {}
    for seed in range(2):
        st = codec.EncodeStats()
        codec.encode(read_midi(data / f"band{seed}.mid"), st)
        want[f"band{seed}.mid"] = st.__dict__
    assert all(w["drums_kept"] > 50 and w["merged"] and w["truncated"] and w["out_of_range"] for w in want.values())
    total = {k: sum(w[k] for w in want.values()) for k in want["band0.mid"]}
    assert s.note_stats == total
    line = (f"notes: {total['kept']:,} of {total['notes_in']:,} kept ({total['drums_kept']:,} drums), "
            f"{total['merged']:,} merged, {total['truncated']:,} truncated, {total['out_of_range']:,} out of range")
    assert line in s.format()
    assert {p["path"]: p["stats"] for p in TokenCache.open(cache).pieces} == want
    out = subprocess.run([sys.executable, "-m", "aurl.data", "info", "--cache", str(cache), "--json"],
                         capture_output=True, text=True, check=True).stdout
    info = json.loads(out)
    assert info["notes"] == total and info["notes_per_file"] == want
    text = subprocess.run([sys.executable, "-m", "aurl.data", "info", "--cache", str(cache)],
                          capture_output=True, text=True, check=True).stdout
    assert line in text


# ----------------------------------------------------------------------------------------------------------
# Scale: the bench's synthetic corpus (bench/corpus_factory.py), built, rebuilt unchanged, one file changed
def _corpus_factory():
    import importlib.util

    spec = importlib.util.spec_from_file_location("corpus_factory", REPO / "bench" / "corpus_factory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _manifest_state(cache: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in cache.glob("manifest.*")}


def test_synthetic_corpus_builds_incrementally_with_corrupt_files_named(tmp_path):
    """200 generated files (transposed, re-timed, re-orchestrated chorales, drum parts, 2 corrupt): the build
    names exactly the corrupt files; an unchanged rebuild tokenizes nothing and writes no manifest; one changed
    file is the only one tokenized and only appended to the journal; the journal-replayed cache equals a fresh
    build of the same folder."""
    from aurl.data.corpus import ensure_bach_midi

    factory = _corpus_factory()
    bach = ensure_bach_midi(progress=False)
    data, cache = tmp_path / "corpus", tmp_path / "cache"
    stamp = factory.generate(data, bach, 200, seed=3)
    # one flush per build (at its end), whatever the machine's load: what each build writes is then fixed
    s = _build(data, cache, workers=2, flush_seconds=1e9)
    assert (s.files, s.pieces, s.tokenized) == (200, 198, 198)
    assert sorted(p for p, _ in s.skipped) == sorted(stamp["corrupt"]) and len(stamp["corrupt"]) == 2
    assert s.note_stats["drums_kept"] > 0  # the drum parts are there, and kept (vocabulary version 2)
    written = _manifest_state(cache)
    assert set(written) == {"manifest.json"}  # the first build writes the snapshot whole

    s = _build(data, cache, workers=2, flush_seconds=1e9)
    assert (s.tokenized, s.new_skipped, s.reused) == (0, 0, 200)
    assert _manifest_state(cache) == written  # nothing rewritten

    before = {p["path"]: p for p in TokenCache.open(cache).pieces}
    changed = factory.file_path(data, 5)
    changed.write_bytes(factory.variant_bytes(factory.load_chorales(bach), 4, 5))
    s = _build(data, cache, workers=2, flush_seconds=1e9)
    assert (s.tokenized, s.reused) == (1, 199)
    after = {p["path"]: p for p in TokenCache.open(cache).pieces}
    compared = before.keys() | after.keys()
    assert len(compared) == 198
    assert [p for p in sorted(compared) if before.get(p) != after.get(p)] == [changed.relative_to(data).as_posix()]
    assert _manifest_state(cache)["manifest.json"] == written["manifest.json"]  # the snapshot stays
    assert (cache / "manifest.journal").read_text().count("\n") == 3  # base, remove the old entry, the new one

    fresh = _build(data, tmp_path / "fresh", workers=0)
    assert fresh.pieces == 198
    assert TokenCache.open(cache).fingerprint == TokenCache.open(tmp_path / "fresh").fingerprint
    tc = TokenCache.open(cache)
    np.testing.assert_array_equal(tc.tokens(after[changed.relative_to(data).as_posix()]),
                                  codec.encode(read_midi(changed)))


def test_the_journal_is_compacted_into_the_manifest_once_it_holds_over_an_eighth_of_it(tmp_path):
    """16 pieces in the snapshot: a changed file journals 2 lines (its old entry removed, the new one), not
    over 16 / 8, so the snapshot stays; one added file makes 3, and the build ends by writing the manifest whole
    (the journal gone). Mutation: wants_compaction always False -> the journal stays, fails."""
    data, cache = _folder(tmp_path, n=16), tmp_path / "cache"
    _build(data, cache)
    snapshot = (cache / "manifest.json").read_bytes()
    write_simple_midi(data / "piece_02.mid", seed=99, n_notes=50)
    _build(data, cache)
    assert (cache / "manifest.json").read_bytes() == snapshot
    assert (cache / "manifest.journal").read_text().count("\n") == 3  # base + 2
    write_simple_midi(data / "added.mid", seed=100)
    s = _build(data, cache)
    assert s.pieces == 17 and not (cache / "manifest.journal").exists()
    assert len(load_manifest(cache)["pieces"]) == 17 and (cache / "manifest.json").read_bytes() != snapshot
