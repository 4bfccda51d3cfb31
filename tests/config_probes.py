"""What the config-key probes share (tests/test_config_keys.py and test_config_keys_<section>.py): the keys,
the probe registry (@probe), and the Lab: real runs of the tiny stage 1 in this process, memoized per
(overrides, env) for the session (the `lab` fixture in conftest.py), on a tokenized corpus built once.
"""


from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from aurl.config import SECTIONS, build_config, load_config
from aurl.console import UserError
from aurl.data.cache import ensure_cache

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "training_configs"
TINY = CONFIGS / "tiny"


# ---------------------------------------------------------------------------------------------------------
# the keys
def yaml_keys() -> set[str]:
    keys = set()
    for path in sorted(CONFIGS.rglob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        for section, values in raw.items():
            for key in values or {}:
                keys.add(f"{section}.{key}")
    return keys


def dataclass_keys() -> set[str]:
    return {f"{section}.{f.name}" for section, sf in SECTIONS.items()
            for f in dataclasses.fields(sf.default_factory)}  # type: ignore[arg-type]


ALL_KEYS = sorted(yaml_keys() | dataclass_keys())
PROBES: dict[str, Callable] = {}


def keys_of(section: str) -> list[str]:
    return [k for k in ALL_KEYS if k.startswith(section + ".")]


def run_probe(key: str, lab) -> None:
    if key not in PROBES:
        pytest.fail(f"no probe for config key {key}")
    PROBES[key](lab, key)


def probe(*keys: str):
    def register(fn):
        for k in keys:
            assert k not in PROBES, f"two probes for {k}"
            PROBES[k] = fn
        return fn
    return register


# ---------------------------------------------------------------------------------------------------------
# real runs of the tiny stage 1, in this process
BASE = ("train.max_steps=4", "eval.enabled=false", "logging.tracker=none", "logging.progress_bar=false")
EVAL = ("eval.enabled=true",)


@dataclasses.dataclass
class Run:
    out: Path
    rc: int
    stderr: str
    child_processes: int  # processes this one started during the run (the cache is built: none but loaders)

    @property
    def state(self) -> dict:
        return json.loads((self.out / "training_state.json").read_text())["stages"]["1"]

    def records(self, split: str) -> dict[int, dict]:
        recs = {}
        for line in (self.out / "logs" / "metrics.jsonl").read_text().splitlines():
            r = json.loads(line)
            if r["split"] == split:
                recs[r["step"]] = r
        return recs

    def train(self, field: str = "loss") -> dict[int, float]:
        return {s: r[field] for s, r in self.records("train").items() if field in r}

    def val(self) -> dict[int, float]:
        return {s: r["loss"] for s, r in self.records("val").items()}

    def checkpoints(self) -> list[int]:
        return sorted(int(p.name.split("_")[1]) for p in (self.out / "checkpoints" / "stage1").glob("step_*"))

    def eval_json(self) -> dict:
        path = self.out / "eval" / "stage1" / "eval.json"
        assert path.exists(), f"no stage-end evaluation; the run's stderr:\n{self.stderr[-3000:]}"
        return json.loads(path.read_text())


class _ChildWatch:
    """Counts the child processes this process starts while a run goes on (polled every 2 ms)."""

    def __init__(self):
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.seen.update(p.pid for p in multiprocessing.active_children())
            except (RuntimeError, ValueError):  # the set of children changed while being read
                pass
            time.sleep(0.002)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def _env(changes: dict[str, str | None]):
    old = {k: os.environ.get(k) for k in changes}
    try:
        for k, v in changes.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class Lab:
    def __init__(self, root: Path):
        self.root = root
        self._runs: dict = {}
        self.tiny = load_config(TINY / "tiny_stage1.yaml")
        d = self.tiny.data
        self.cache_dir = root / "cache"  # the tokenized corpus of the tiny config, built once
        self.cache = ensure_cache(d.data_dir, self.cache_dir, val_fraction=d.val_fraction, split_seed=d.split_seed,
                                  workers=0, progress=False, corpus_limit=d.corpus_limit)
        self.slurm_end = str(int(time.time()) + 3600)

    def fresh_dir(self, name: str) -> Path:
        p = self.root / name
        n = 0
        while p.exists():
            n += 1
            p = self.root / f"{name}{n}"
        return p

    def cache_copy(self) -> Path:
        """A private copy of the corpus cache, for runs that rewrite its split."""
        dst = self.fresh_dir("cache_copy")
        shutil.copytree(self.cache_dir, dst, ignore=shutil.ignore_patterns(".lock"))
        return dst

    def run(self, *overrides: str, env: dict[str, str | None] | None = None) -> Run:
        """Stage 1 of the tiny pipeline with BASE + overrides (later ones win); memoized."""
        key = (overrides, tuple(sorted((env or {}).items())))
        if key not in self._runs:
            from aurl.train.pipeline import load_pipeline, run_pipeline

            out = self.fresh_dir("run")
            cfgs = load_pipeline(TINY, [f"data.cache_dir={self.cache_dir}", *BASE, *overrides])
            err = io.StringIO()
            env = {"SLURM_JOB_END_TIME": None, **(env or {})}
            with _env(env), contextlib.redirect_stderr(err), _ChildWatch() as watch:
                rc = run_pipeline(cfgs, out, (1,))
            self._runs[key] = Run(out, rc, err.getvalue(), len(watch.seen))
        return self._runs[key]

    def base(self) -> Run:
        return self.run()


def rejects(key: str, value, section_values: dict | None = None) -> None:
    """build_config refuses `key = value` with a UserError that names the key."""
    section, name = key.split(".")
    raw = {section: {**(section_values or {}), name: value}}
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        build_config(raw)


def assert_differs_after_first_step(a: dict[int, float], b: dict[int, float]) -> None:
    """Same loss before any update (the key acts on the updates), different afterwards."""
    assert a.keys() == b.keys() and len(a) > 1
    assert a[1] == b[1], "the first step's loss differs: something besides the updates changed"
    assert any(a[s] != b[s] for s in a if s > 1), f"the same losses after the updates: {a}"


