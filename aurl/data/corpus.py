"""The bundled corpus: Bach's four-part chorales from music21's corpus, converted to MIDI on first use.

music21 ships them as MusicXML (no network needed). Which files: the Riemenschneider collection (371
numbers) mapped to BWV numbers by music21's own table, one file per distinct BWV harmonisation (a few
numbers repeat the same BWV), about 350 pieces. Converting one takes ~0.3 s, so conversion runs once, in
parallel worker processes, into a folder that later runs reuse (default: $AURL_CORPUS_DIR, else
$XDG_CACHE_HOME/aurl/bach_chorales, else ~/.cache/aurl/bach_chorales). Every file is written atomically,
so an interrupted conversion resumes where it stopped.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from aurl.console import warn


def default_corpus_dir() -> Path:
    if os.environ.get("AURL_CORPUS_DIR"):
        return Path(os.environ["AURL_CORPUS_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "aurl" / "bach_chorales"


def bach_chorale_sources() -> list[tuple[str, Path]]:
    """(name, music21 source file) for each distinct chorale, sorted by name (deterministic)."""
    from music21 import corpus
    from music21.corpus.chorales import ChoraleListRKBWV

    files = {p.name: p for p in corpus.getComposer("bach") if p.suffix in (".mxl", ".xml")}
    out: dict[str, Path] = {}
    for entry in ChoraleListRKBWV().byRiemenschneider.values():
        bwv = str(entry["bwv"])
        for candidate in (f"bwv{bwv}.mxl", f"bwv{bwv}.xml"):
            if candidate in files:
                out[f"bwv{bwv}"] = files[candidate]
                break
    return sorted(out.items())


def _convert_one(source: str, target: str) -> str | None:
    """Convert one MusicXML file to MIDI (in a worker process). Returns an error message or None."""
    try:
        from music21 import converter

        from aurl.atomic import atomic_write_bytes

        score = converter.parse(source)
        tmp = Path(target).with_name(Path(target).name + f".{os.getpid()}.part")  # not *.mid: never scanned
        try:
            score.write("midi", fp=str(tmp))
            atomic_write_bytes(target, tmp.read_bytes())
        finally:
            tmp.unlink(missing_ok=True)
        return None
    except Exception as e:  # noqa: BLE001 - any music21 failure means "skip this chorale", reported below
        return f"{type(e).__name__}: {e}"


def ensure_bach_midi(
    out_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Make sure the chorales exist as .mid files in out_dir (converting the missing ones); return out_dir.

    limit: only the first `limit` chorales (by name), for tests and quick runs.
    """
    out = Path(out_dir) if out_dir is not None else default_corpus_dir()
    out.mkdir(parents=True, exist_ok=True)
    sources = bach_chorale_sources()[:limit] if limit is not None else bach_chorale_sources()
    todo = [(str(src), str(out / f"{name}.mid")) for name, src in sources if not (out / f"{name}.mid").exists()]
    if not todo:
        return out
    n_workers = max(1, min(workers if workers is not None else (os.cpu_count() or 1), len(todo)))  # 0 -> here
    failures: list[str] = []
    if n_workers == 1:
        results = ((t, _convert_one(s, t)) for s, t in todo)
        _consume(results, len(todo), failures, progress)
    else:
        with ProcessPoolExecutor(n_workers, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_convert_one, s, t): t for s, t in todo}
            results = ((futures[f], f.result()) for f in as_completed(futures))
            _consume(results, len(todo), failures, progress)
    for f in failures:
        warn(f"bach corpus: could not convert {f}")
    return out


def _consume(results, total: int, failures: list[str], progress: bool) -> None:
    from tqdm import tqdm

    with tqdm(total=total, desc="converting Bach chorales to MIDI", unit="file", disable=not progress) as bar:
        for target, err in results:
            if err:
                failures.append(f"{Path(target).name}: {err}")
            bar.update(1)
