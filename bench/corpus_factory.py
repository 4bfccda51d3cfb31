"""A synthetic Lakh-sized MIDI corpus from the bundled Bach chorales (used by bench_corpus.py and its test).

Each file i is a pure function of (seed, i): 1-4 chorales played one after another, each transposed
(-7..+7 semitones), at its own tempo (40-200 bpm, a tempo change at each section), on its own General MIDI
programs (one per voice), with a drum part (is_drum track: kick, snare, hi-hat) in about half of the files
and a velocity shift. So files are real, varied, valid MIDI of 1-5 minutes, like Lakh's, written with
symusic straight from pre-parsed chorales (~1 ms a file). One file in `corrupt_every` is corrupt instead,
in one of the ways Lakh's bad files are (empty, no header, cut short, zero ticks per beat, garbage).

A folder holds its own stamp (corpus.json: seed, count, corrupt files); an existing folder with the same
stamp is reused as it is, so a 100,000-file corpus is generated once.
"""

from __future__ import annotations

import json
import os
import struct
import time
from pathlib import Path

import numpy as np

STAMP = "corpus.json"
FILES_PER_FOLDER = 1000  # Lakh spreads its files over folders too; 100,000 in one folder slows every ls
# General MIDI programs a chorale voice is given: pianos, organs, guitars, strings, ensembles, brass, reeds, pipes
PROGRAMS = np.array([0, 1, 4, 6, 16, 19, 24, 25, 32, 40, 41, 42, 48, 49, 52, 56, 57, 60, 64, 65, 68, 71, 73, 74])
KICK, SNARE, HIHAT = 36, 38, 42
CORRUPT_KINDS = ("empty", "no_header", "cut_short", "zero_division", "garbage")


def load_chorales(folder: Path) -> list:
    """The chorales as symusic Scores (tick time), sorted by name: parsed once, reused for every file."""
    import symusic

    files = sorted(folder.glob("*.mid"))
    if not files:
        raise SystemExit(f"no .mid file in {folder}: run `python -m aurl.data build` once to convert the chorales")
    return [symusic.Score(str(f)) for f in files]


def _drum_track(end_tick: int, tpq: int, rng: np.random.Generator):
    """A rock beat over [0, end_tick): kick on 1 and 3, snare on 2 and 4, hi-hat on every eighth."""
    import symusic

    eighth = tpq // 2
    hat = np.arange(0, end_tick, eighth, dtype=np.int32)
    beats = hat[::2]
    time = np.concatenate([beats, hat])
    pitch = np.concatenate([np.where(np.arange(len(beats)) % 2 == 0, KICK, SNARE), np.full(len(hat), HIHAT)])
    duration = np.concatenate([np.full(len(beats), eighth), np.full(len(hat), eighth // 2)]).astype(np.int32)
    velocity = np.concatenate([rng.integers(80, 120, len(beats)), rng.integers(50, 90, len(hat))])
    order = np.argsort(time, kind="stable")
    track = symusic.Track("drums", 0, True)
    track.notes = symusic.Note.from_numpy(time[order], duration[order], pitch[order].astype(np.int8),
                                          velocity[order].astype(np.int8))
    return track


def variant_bytes(chorales: list, seed: int, index: int) -> bytes:
    """The MIDI bytes of file `index`: a pure function of (seed, index) and the chorales."""
    import symusic

    rng = np.random.default_rng([seed, index])
    parts = rng.choice(len(chorales), size=int(rng.integers(1, 5)))
    tpq = chorales[0].tpq
    out = symusic.Score(tpq)
    offset = 0
    for n, c in enumerate(parts):
        piece = chorales[int(c)].resample(tpq) if chorales[int(c)].tpq != tpq else chorales[int(c)]
        piece = piece.shift_pitch(int(rng.integers(-7, 8))).shift_velocity(int(rng.integers(-30, 20)))
        out.tempos.append(symusic.Tempo(offset, float(rng.uniform(40, 200))))
        for track in piece.tracks:
            if len(track.notes) == 0:
                continue
            moved = track.shift_time(offset)
            moved.program = int(rng.choice(PROGRAMS))
            moved.name = f"part{n} {track.name}"
            out.tracks.append(moved)
        offset += int(piece.end()) + tpq  # a beat of rest between sections
    if rng.random() < 0.5:
        out.tracks.append(_drum_track(offset, tpq, rng))
    return out.dumps_midi()


def corrupt_bytes(good: bytes, kind: str, rng: np.random.Generator) -> bytes:
    if kind == "empty":
        return b""
    if kind == "no_header":
        return b"RIFF" + good[4:]
    if kind == "cut_short":
        return good[:10]
    if kind == "zero_division":
        return good[:12] + struct.pack(">h", 0) + good[14:]
    assert kind == "garbage", kind
    return good[:14] + rng.integers(0, 256, len(good) - 14, dtype=np.uint8).tobytes()  # a valid header only


def file_path(root: Path, index: int) -> Path:
    return root / f"{index // FILES_PER_FOLDER:03d}" / f"{index:07d}.mid"


def generate(root: Path, chorale_dir: Path, n_files: int, seed: int = 0, corrupt_every: int = 100) -> dict:
    """Write the corpus under root (or reuse it when its stamp matches); -> the stamp (with the corrupt files)."""
    want = {"seed": seed, "files": n_files, "corrupt_every": corrupt_every}
    stamp_path = root / STAMP
    if stamp_path.exists():
        stamp = json.loads(stamp_path.read_text())
        if {k: stamp.get(k) for k in want} == want:
            return stamp
        raise SystemExit(f"{root} holds another corpus ({stamp_path}: {json.dumps({k: stamp.get(k) for k in want})}); "
                         "pick another --corpus folder or delete that one")
    t0 = time.perf_counter()
    chorales = load_chorales(chorale_dir)
    corrupt: dict[str, str] = {}
    for i in range(n_files):
        data = variant_bytes(chorales, seed, i)
        if corrupt_every and i % corrupt_every == corrupt_every - 1:
            kind = CORRUPT_KINDS[(i // corrupt_every) % len(CORRUPT_KINDS)]
            data = corrupt_bytes(data, kind, np.random.default_rng([seed, i, 1]))
            corrupt[file_path(root, i).relative_to(root).as_posix()] = kind
        path = file_path(root, i)
        if i % FILES_PER_FOLDER == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)  # not atomic: the stamp, written last, says the corpus is complete
    stamp = {**want, "corrupt": corrupt, "seconds": round(time.perf_counter() - t0, 1),
             "bytes": sum(f.stat().st_size for f in root.rglob("*.mid"))}
    tmp = stamp_path.with_name(STAMP + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(stamp, indent=1))
    os.replace(tmp, stamp_path)
    return stamp
