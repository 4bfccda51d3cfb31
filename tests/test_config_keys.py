"""Every config key is used: changing it changes what the code does, or a bad value is refused naming it.

The keys are collected from every YAML under configs/training_configs/ and from every field of the config
dataclasses; each has a probe below (``@probe("section.key")``), and a key without one fails
``test_every_key_has_a_probe`` by name. A probe observes the key through the code that uses it:

- model: the built MusicTransformerVAEGAN (parameter count, or its forward output / metrics / gradients
  with the very same weights);
- augment: aurl.data.augment.augment_tokens at fixed (seed, epoch, index) draws, and one real run;
- data, optim, train, checkpoint, logging, eval: short real runs of the tiny stage 1 in this process
  (load_pipeline + run_pipeline, exactly what `python -m aurl.train` calls), compared with a run that
  differs only in the probed key (or in a group of keys that act on separate outputs): checkpoints on disk,
  training_state.json, logs/metrics.jsonl, the progress bar on stderr, TensorBoard / W&B files,
  eval/stage1/eval.json, the exit code.

Runs are memoized per (overrides, env) for the session, and the tokenized corpus is built once.
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

import numpy as np
import pytest
import torch
import yaml
from midi_factory import random_score, write_simple_midi

from aurl import vocab
from aurl.config import SECTIONS, build_config, load_config
from aurl.console import UserError
from aurl.data.augment import AugmentConfig, augment_tokens, sample_rng
from aurl.data.cache import TokenCache, ensure_cache
from aurl.model import MusicTransformerVAEGAN
from aurl.model.config import ModelConfig
from aurl.train.preemption import STOPPED_EXIT
from aurl.train.schedule import lr_at

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


def probe(*keys: str):
    def register(fn):
        for k in keys:
            assert k not in PROBES, f"two probes for {k}"
            PROBES[k] = fn
        return fn
    return register


def test_every_key_has_a_probe():
    missing = [k for k in ALL_KEYS if k not in PROBES]
    assert not missing, (f"config keys without a probe in tests/test_config_keys.py: {', '.join(missing)} "
                         "(add an @probe showing that changing the key changes behaviour, or remove the key)")


def test_no_probe_for_a_key_that_is_gone():
    stale = sorted(set(PROBES) - set(ALL_KEYS))
    assert not stale, f"probes for keys that no YAML or config dataclass has: {', '.join(stale)}"


def test_shipped_yamls_are_found():
    assert {"data.seq_len", "model.mode", "augment.enabled", "optim.lr", "train.epochs", "checkpoint.keep",
            "logging.tracker", "eval.enabled"} <= yaml_keys()
    assert yaml_keys() <= dataclass_keys(), sorted(yaml_keys() - dataclass_keys())


@pytest.mark.parametrize("key", ALL_KEYS)
def test_key_is_used(key, lab):
    if key not in PROBES:
        pytest.fail(f"no probe for config key {key}")
    PROBES[key](lab, key)


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
                rc = run_pipeline(cfgs, out, (1,), None, None)
            self._runs[key] = Run(out, rc, err.getvalue(), len(watch.seen))
        return self._runs[key]

    def base(self) -> Run:
        return self.run()


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Lab:
    return Lab(tmp_path_factory.mktemp("config_keys"))


def step_weights(run: Run, step: int) -> dict[str, torch.Tensor]:
    """The model weights of run's committed checkpoint at `step` (accelerate's model.safetensors)."""
    from safetensors.torch import load_file

    return load_file(str(run.out / "checkpoints" / "stage1" / f"step_{step:08d}" / "model.safetensors"))


def rejects(key: str, value, section_values: dict | None = None) -> None:
    """build_config refuses `key = value` with a UserError that names the key."""
    section, name = key.split(".")
    raw = {section: {**(section_values or {}), name: value}}
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        build_config(raw)


def test_baseline_run_is_deterministic(lab):
    """Differences in the probes below come from the key, not from run-to-run noise."""
    a, b = lab.base(), lab.run(env={"AURL_PROBE_CONTROL": "1"})
    assert a.rc == b.rc == 0
    assert a.train() == b.train() and a.val() == b.val()
    assert a.checkpoints() == b.checkpoints() == [3, 4]  # 3 steps per epoch; keep 2
    assert sorted(a.train()) == [1, 2, 3, 4] and sorted(a.val()) == [3, 4]


def assert_differs_after_first_step(a: dict[int, float], b: dict[int, float]) -> None:
    """Same loss before any update (the key acts on the updates), different afterwards."""
    assert a.keys() == b.keys() and len(a) > 1
    assert a[1] == b[1], "the first step's loss differs: something besides the updates changed"
    assert any(a[s] != b[s] for s in a if s > 1), f"the same losses after the updates: {a}"


# ---------------------------------------------------------------------------------------------------------
# data
@probe("data.data_dir")
def _(lab, key):
    folder = lab.fresh_dir("midi")
    for i in range(6):
        write_simple_midi(folder / f"piece{i}.mid", seed=i, n_notes=120)
    cache = lab.fresh_dir("cache_midi")
    r = lab.run(f"{key}={folder}", f"data.cache_dir={cache}")
    assert r.rc == 0
    assert sorted(p["path"] for p in TokenCache.open(cache).pieces) == [f"piece{i}.mid" for i in range(6)]
    assert r.state["data_fingerprint"] != lab.base().state["data_fingerprint"]
    rejects(key, 3)


@probe("data.cache_dir")
def _(lab, key):
    base = lab.base()
    assert not (base.out / "cache").exists()  # the baseline used data.cache_dir
    r = lab.run(f"{key}=null")  # null = <output-dir>/cache
    assert r.rc == 0 and (r.out / "cache" / "manifest.json").is_file()
    assert r.state["data_fingerprint"] == base.state["data_fingerprint"]  # the same corpus, elsewhere
    rejects(key, 5)


@probe("data.corpus_limit")
def _(lab, key):
    assert len(lab.cache.pieces) == lab.tiny.data.corpus_limit == 6
    cache = lab.fresh_dir("cache_limit")
    r = lab.run(f"{key}=5", f"data.cache_dir={cache}")
    assert r.rc == 0
    five = TokenCache.open(cache).pieces
    assert len(five) == 5 and {p["path"] for p in five} < {p["path"] for p in lab.cache.pieces}
    rejects(key, 1)


@probe("data.val_fraction")
def _(lab, key):
    cache = lab.cache_copy()
    r = lab.run(f"{key}=0.7", f"data.cache_dir={cache}")
    assert r.rc == 0
    assert len(TokenCache.open(cache).val_pieces) > len(lab.cache.val_pieces)
    assert r.state["data_fingerprint"] != lab.base().state["data_fingerprint"]
    rejects(key, 1.0)


@probe("data.split_seed")
def _(lab, key):
    cache = lab.cache_copy()
    r = lab.run(f"{key}=1", f"data.cache_dir={cache}")
    assert r.rc == 0
    assert ({p["path"] for p in TokenCache.open(cache).val_pieces} != {p["path"] for p in lab.cache.val_pieces})
    assert r.val() != lab.base().val()
    rejects(key, "one")


def first_step_targets(lab, seq_len: int, batch_size: int = 4) -> float:
    """The tiny run's logged tokens of step 1: scored tokens per micro-batch, averaged over its grad_accum
    micro-batches (the windows' own tokens after the first position; a state prefix is context only)."""
    from aurl.data.dataset import EpochBatchSampler, WindowDataset

    t = lab.tiny
    ds = WindowDataset(lab.cache, "train", seq_len=seq_len, augment=t.augment, seed=t.train.seed,
                       start_share=t.data.start_share)
    sampler = EpochBatchSampler(len(ds), batch_size, seed=t.train.seed)
    sampler.set_epoch(0)
    batches = list(iter(sampler))[: t.optim.grad_accum]
    return sum(int(ds[k]["loss_mask"][1:].sum()) for b in batches for k in b) / len(batches)


@probe("data.seq_len")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=32")
    # targets per micro-batch: at most batch_size x (seq_len - 1), fewer by the windows' state prefixes
    assert base.train("tokens")[1] == first_step_targets(lab, 64) > 4 * 50
    assert r.train("tokens")[1] == first_step_targets(lab, 32) > 4 * 20
    with pytest.raises(UserError, match=r"data\.seq_len"):  # longer than the model's context
        build_config({"data": {"seq_len": 128}, "model": {"max_seq_len": 64}})
    rejects(key, 1)


@probe("data.start_share")
def _(lab, key):
    """1.0: every training window starts at the piece's opening (START), so other batches from step 1."""
    from aurl.data.dataset import WindowDataset

    base, r = lab.base(), lab.run(f"{key}=1.0")
    assert r.rc == 0 and r.train()[1] != base.train()[1]
    ds = WindowDataset(lab.cache, "train", seq_len=lab.tiny.data.seq_len, start_share=1.0)
    assert all(ds.window(0, i)[0][0] == vocab.START_ID for i in range(len(ds)))
    rejects(key, 1.5)


@probe("data.batch_size")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=2")
    assert base.train("tokens")[1] == first_step_targets(lab, 64) and r.train("tokens")[1] == first_step_targets(lab, 64, 2)
    rejects(key, 0)


@probe("data.num_workers")
def _(lab, key):
    """Same batches by design (samples are pure functions of (seed, epoch, index)), but loaded elsewhere."""
    base, r = lab.base(), lab.run(f"{key}=1")
    assert base.child_processes == 0
    assert r.child_processes >= 1  # the DataLoader worker processes
    assert r.train() == base.train() and r.val() == base.val()
    rejects(key, -1)


# ---------------------------------------------------------------------------------------------------------
# model: the built MusicTransformerVAEGAN
SMALL = dict(d_model=32, n_layers=1, n_heads=2, d_ff=64, max_seq_len=64, latent_dim=8, encoder_layers=1,
             disc_d_model=16, disc_layers=1, disc_heads=2, dropout=0.0)


def build(**kw) -> MusicTransformerVAEGAN:
    torch.manual_seed(0)
    return MusicTransformerVAEGAN(ModelConfig(**{**SMALL, **kw}))


def twins(key: str, a, b, **kw) -> tuple[MusicTransformerVAEGAN, MusicTransformerVAEGAN]:
    """Two models that differ only in `key`, with the very same weights."""
    name = key.split(".")[1]
    ma, mb = build(**{**kw, name: a}), build(**{**kw, name: b})
    mb.load_state_dict(ma.state_dict())
    return ma, mb


def batch(n: int = 4, t: int = 48) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab.VOCAB_SIZE, (n, t), generator=g)
    return ids, torch.ones(n, t, dtype=torch.bool)


def forward(model, step: int = 0, phase: str = "generator", seed: int = 0):
    torch.manual_seed(seed)
    ids, mask = batch()
    return model(ids, mask, step=step, phase=phase, return_logits=True)


def sizes_differ(key: str, a, b, **kw) -> None:
    name = key.split(".")[1]
    na, nb = build(**{**kw, name: a}).num_parameters(), build(**{**kw, name: b}).num_parameters()
    assert na != nb, f"{key}: {a} and {b} build models of the same size ({na})"


@probe("model.mode")
def _(lab, key):
    sizes = [build(mode=m).num_parameters() for m in ("transformer", "vae", "vae_gan")]
    assert sizes[0] < sizes[1] < sizes[2]
    assert "kl" in forward(build(mode="vae")).metrics and "kl" not in forward(build()).metrics
    rejects(key, "gan")


@probe("model.vocab_size")
def _(lab, key):
    """Fixed by the vocabulary: the embedding has vocab_size rows, and another value is refused."""
    assert build().tok_emb.num_embeddings == vocab.VOCAB_SIZE
    rejects(key, vocab.VOCAB_SIZE + 1)


@probe("model.d_model")
def _(lab, key):
    sizes_differ(key, 32, 64, n_heads=2)
    rejects(key, 0)


@probe("model.n_layers")
def _(lab, key):
    sizes_differ(key, 1, 2)
    assert len(build(n_layers=3).decoder.blocks) == 3
    rejects(key, 0)


@probe("model.d_ff")
def _(lab, key):
    sizes_differ(key, 64, 128)
    rejects(key, 0)


@probe("model.n_heads")
def _(lab, key):
    a, b = twins(key, 2, 4)
    assert a.num_parameters() == b.num_parameters()
    assert not torch.equal(forward(a.eval()).logits, forward(b.eval()).logits)
    rejects(key, 3)


@probe("model.max_seq_len")
def _(lab, key):
    """The context the model is given: the evaluation's validation windows, the generation KV cache."""
    from aurl.evaluate.core import EvalConfig, validation_nll

    a, b = twins(key, 64, 16)
    va = validation_nll(a, lab.cache, EvalConfig(num_samples=0), "cpu")
    vb = validation_nll(b, lab.cache, EvalConfig(num_samples=0), "cpu")
    assert vb["windows"] > 3 * va["windows"] and va["nll_per_token"] != vb["nll_per_token"]
    assert a.new_cache(1).max_len == 64 and b.new_cache(1).max_len == 16
    with pytest.raises(UserError, match=r"data\.seq_len"):  # windows longer than the model's context
        build_config({"model": {"max_seq_len": 32}, "data": {"seq_len": 64}})


@probe("model.dropout")
def _(lab, key):
    a, b = twins(key, 0.0, 0.5)
    assert not torch.equal(forward(a.train()).logits, forward(b.train()).logits)
    assert torch.equal(forward(a.eval()).logits, forward(b.eval()).logits)  # only while training
    rejects(key, 1.0)


@probe("model.rope_base")
def _(lab, key):
    a, b = twins(key, 10000.0, 100.0)
    assert not torch.equal(forward(a.eval()).logits, forward(b.eval()).logits)
    rejects(key, 1.0)


@probe("model.sounding_embedding")
def _(lab, key):
    """On: a Linear(88, d_model) of the pitches sounding after each token is added to its embedding (twins with
    the same weights differ once it is non-zero, and only where notes sound); off: no such weight."""
    off, on = build(), build(sounding_embedding=True)
    assert off.sound_proj is None and on.num_parameters() - off.num_parameters() == 88 * SMALL["d_model"]
    on.load_state_dict({**off.state_dict(), "sound_proj.weight": torch.randn(SMALL["d_model"], 88)})
    silent = torch.full((1, 12), vocab.TIME_SHIFT_OFFSET)  # no note sounds: the feature is zero there
    assert torch.equal(on.eval().decode(silent), off.eval().decode(silent))
    assert not torch.allclose(forward(on.eval()).logits, forward(off.eval()).logits)
    rejects(key, "yes")


@probe("model.latent_dim")
def _(lab, key):
    sizes_differ(key, 8, 16, mode="vae")
    assert forward(build(mode="vae", latent_dim=16).eval()) is not None
    rejects(key, 0)


@probe("model.encoder_layers")
def _(lab, key):
    sizes_differ(key, 1, 2, mode="vae")
    rejects(key, 0, {"mode": "vae"})


def vae_metric(key: str, a, b, metric: str, step: int = 0, **kw) -> tuple[float, float]:
    ma, mb = twins(key, a, b, mode="vae", **kw)
    return float(forward(ma, step).metrics[metric]), float(forward(mb, step).metrics[metric])


@probe("model.kl_beta_max")
def _(lab, key):
    a, b = vae_metric(key, 0.2, 0.5, "kl/beta", step=10_000)
    assert (a, b) == (pytest.approx(0.2), pytest.approx(0.5))
    ma, mb = twins(key, 0.2, 0.5, mode="vae")
    assert float(forward(ma, 10_000).loss.detach()) != float(forward(mb, 10_000).loss.detach())
    rejects(key, -0.1)


@probe("model.kl_warmup_steps")
def _(lab, key):
    a, b = vae_metric(key, 100, 1000, "kl/beta", step=50, kl_beta_max=0.2)
    assert (a, b) == (pytest.approx(0.1), pytest.approx(0.01))
    rejects(key, -1)


@probe("model.free_bits")
def _(lab, key):
    a, b = vae_metric(key, 0.0, 5.0, "kl/free_bits_loss", latent_dim=8)
    assert b == pytest.approx(5.0 * 8) and a < b  # every dim below 5 nats is charged 5
    rejects(key, -1.0)


@probe("model.active_unit_threshold")
def _(lab, key):
    a, b = vae_metric(key, 0.0, 1e9, "kl/active_units", latent_dim=8)
    assert (a, b) == (8.0, 0.0)
    rejects(key, -1.0)


@probe("model.word_dropout")
def _(lab, key):
    """Zeroes decoder inputs in vae training only: twins differ in train mode, agree in eval mode."""
    ma, mb = twins(key, 0.0, 0.5, mode="vae")
    train = [float(forward(m.train()).metrics["recon"]) for m in (ma, mb)]
    evals = [float(forward(m.eval()).metrics["recon"]) for m in (ma, mb)]
    assert train[0] != train[1] and evals[0] == evals[1]
    rejects(key, 1.0)
    rejects(key, -0.1)


@probe("model.mu_bn_gamma")
def _(lab, key):
    """BN-VAE: the batch's posterior means get variance gamma^2 per dim (0 = off: whatever the encoder gives)."""
    ma, mb = build(mode="vae", latent_dim=8), build(mode="vae", latent_dim=8, mu_bn_gamma=0.5)
    assert mb.load_state_dict(ma.state_dict(), strict=False).missing_keys == ["mu_bn.running_mean",
                                                                              "mu_bn.running_var"]
    ids, mask = batch()
    var = [m.train().encode(ids, mask)[0].detach().var(0, unbiased=False) for m in (ma, mb)]
    assert ((var[1] - 0.25).abs() < 1e-3).all() and float(var[0].max()) < 0.01
    rejects(key, -0.1)


@probe("model.disc_d_model")
def _(lab, key):
    sizes_differ(key, 16, 32, mode="vae_gan")
    rejects(key, 0)


@probe("model.disc_layers")
def _(lab, key):
    sizes_differ(key, 1, 2, mode="vae_gan")
    rejects(key, 0)


@probe("model.disc_heads")
def _(lab, key):
    a, b = twins(key, 2, 4, mode="vae_gan", disc_d_model=32)
    assert a.num_parameters() == b.num_parameters()
    da = forward(a.eval(), phase="discriminator").metrics["d/real"]
    db = forward(b.eval(), phase="discriminator").metrics["d/real"]
    assert float(da) != float(db)
    rejects(key, 3, {"disc_d_model": 16})


def adv_weight(key: str, a, b, step: int, **kw) -> tuple[float, float]:
    ma, mb = twins(key, a, b, mode="vae_gan", **kw)
    return (float(forward(ma.eval(), step).metrics["g/adv_weight"]),
            float(forward(mb.eval(), step).metrics["g/adv_weight"]))


@probe("model.adv_weight_max")
def _(lab, key):
    assert adv_weight(key, 0.05, 0.5, 10_000, adv_start_step=0, adv_warmup_steps=10) == \
        (pytest.approx(0.05), pytest.approx(0.5))
    rejects(key, -0.1)


@probe("model.adv_start_step")
def _(lab, key):
    assert adv_weight(key, 0, 100, 50, adv_weight_max=0.1, adv_warmup_steps=0) == (pytest.approx(0.1), 0.0)
    rejects(key, -1)


@probe("model.adv_warmup_steps")
def _(lab, key):
    assert adv_weight(key, 100, 0, 50, adv_weight_max=0.1, adv_start_step=0) == \
        (pytest.approx(0.05), pytest.approx(0.1))
    rejects(key, -1)


@probe("model.gumbel_tau")
def _(lab, key):
    """Hard Gumbel samples are the same for any tau; the straight-through gradient to G is not."""
    grads = []
    for model in twins(key, 1.0, 0.1, mode="vae_gan", adv_weight_max=1.0, adv_warmup_steps=0):
        model.eval()
        out = forward(model, step=10, seed=1)
        model.zero_grad()
        out.loss.backward()
        grads.append(model.tok_emb.weight.grad.clone())
    assert not torch.equal(grads[0], grads[1])
    rejects(key, 0.0)


# ---------------------------------------------------------------------------------------------------------
# augment: the augmentation functions at fixed draws, and one real run
ALL_OFF = dict(transpose_prob=0.0, stretch_prob=0.0, velocity_prob=0.0, instrument_prob=0.0, swing_prob=0.0,
               humanize_prob=0.0)


def windows(cfg: AugmentConfig, n: int = 8) -> list[np.ndarray]:
    """Sample i of epoch 0 (seed 0) of a multi-instrument, many-velocity piece, augmented with cfg."""
    out = []
    for i in range(n):
        toks = vocab.encode(random_score(i, n_notes=120, n_programs=4))[:256]
        out.append(augment_tokens(toks, cfg, sample_rng(0, 0, i, stream=1), start_clock=lambda: 5)[0])
    return out


def aug_differs(key: str, a, b, **on) -> None:
    name = key.split(".")[1]
    wa = windows(AugmentConfig(**{"enabled": True, **ALL_OFF, **on, name: a}))
    wb = windows(AugmentConfig(**{"enabled": True, **ALL_OFF, **on, name: b}))
    assert any(len(x) != len(y) or not np.array_equal(x, y) for x, y in zip(wa, wb, strict=True)), \
        f"{key}: {a} and {b} give the same augmented windows"


def aug_rejects(key: str, value, **kw) -> None:
    with pytest.raises(UserError, match=key.split(".")[1]):
        build_config({"augment": {"enabled": True, **kw, key.split(".")[1]: value}})


@probe("augment.enabled")
def _(lab, key):
    on = {**{k: 1.0 for k in ALL_OFF}}
    aug_differs(key, False, True, **on)
    # and in the trainer: the training windows (so the losses) change; validation windows never augment
    base, r = lab.base(), lab.run(f"{key}=true")
    assert r.train()[1] != base.train()[1]
    rejects(key, "yes")


# augment keys: (value a, value b) whose windows differ, with the other settings that make the key matter;
# then a value that is refused, with the settings that make it invalid
AUGMENT_PROBES = {
    "augment.transpose_prob": ((0.0, 1.0), {}, 1.5, {}),
    "augment.transpose_max": ((1, 6), {"transpose_prob": 1.0}, -1, {}),
    "augment.stretch_prob": ((0.0, 1.0), {}, -0.5, {}),
    "augment.stretch_min": ((0.5, 0.9), {"stretch_prob": 1.0, "stretch_max": 1.0}, 2.0, {"stretch_max": 1.5}),
    "augment.stretch_max": ((1.1, 2.0), {"stretch_prob": 1.0, "stretch_min": 1.0}, 0.5, {"stretch_min": 0.8}),
    "augment.velocity_prob": ((0.0, 1.0), {}, 2.0, {}),
    "augment.velocity_min": ((0.5, 0.9), {"velocity_prob": 1.0, "velocity_max": 1.0}, 0.0, {}),
    "augment.velocity_max": ((1.1, 1.5), {"velocity_prob": 1.0, "velocity_min": 1.0}, 0.5, {"velocity_min": 0.8}),
    "augment.instrument_prob": ((0.0, 1.0), {}, 1.1, {}),
    "augment.instrument_mode": (("group", "any"), {"instrument_prob": 1.0}, "family", {}),
    "augment.swing_prob": ((0.0, 1.0), {"swing_max": 0.5}, -1.0, {}),
    "augment.swing_max": ((0.1, 0.6), {"swing_prob": 1.0}, 1.0, {}),
    "augment.swing_beat_steps": ((32, 12), {"swing_prob": 1.0, "swing_max": 0.6}, 1, {}),
    "augment.humanize_prob": ((0.0, 1.0), {}, 1.5, {}),
    "augment.humanize_steps": ((1, 4), {"humanize_prob": 1.0}, -1, {}),
}


@probe(*AUGMENT_PROBES)
def _(lab, key):
    (a, b), context, bad, bad_context = AUGMENT_PROBES[key]
    aug_differs(key, a, b, **context)
    aug_rejects(key, bad, **bad_context)


# ---------------------------------------------------------------------------------------------------------
# optim: the learning rate the loop set (logged at every step) and the losses after the updates
def lrs(run: Run) -> dict[int, float]:
    return run.train("lr")


def expected_lrs(lr: float, warmup: int, min_ratio: float, total: int = 4) -> dict[int, float]:
    """The lr logged at step s was set for optimizer step s - 1."""
    return {s: pytest.approx(lr_at(s - 1, lr, warmup, total, min_ratio)) for s in range(1, total + 1)}


@probe("optim.lr")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=0.002")
    assert lrs(base) == expected_lrs(1e-3, 2, 0.1) and lrs(r) == expected_lrs(2e-3, 2, 0.1)
    assert_differs_after_first_step(base.train(), r.train())
    rejects(key, 0)


@probe("optim.min_lr_ratio")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=0.5")
    assert lrs(r) == expected_lrs(1e-3, 2, 0.5) and lrs(r)[4] != lrs(base)[4]
    rejects(key, 1.5)


@probe("optim.warmup_steps")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=0")
    assert lrs(base)[1] == pytest.approx(0.5e-3) and lrs(r)[1] == pytest.approx(1e-3)
    assert lrs(r) == expected_lrs(1e-3, 0, 0.1)
    rejects(key, -1)


@probe("optim.weight_decay")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.5").train())
    rejects(key, -0.1)


@probe("optim.beta1")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.5").train())
    rejects(key, 1.0)


@probe("optim.beta2")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.5").train())
    rejects(key, 1.0)


@probe("optim.grad_clip")
def _(lab, key):
    assert_differs_after_first_step(lab.base().train(), lab.run(f"{key}=0.01").train())
    rejects(key, -1.0)


@probe("optim.grad_accum")
def _(lab, key):
    one_epoch = ("train.max_steps=0", "train.epochs=1")
    two, one = lab.run(*one_epoch), lab.run(*one_epoch, f"{key}=1")
    assert two.state["step"] == 3 and one.state["step"] >= 6  # the same windows in twice the steps
    rejects(key, 0)


@probe("optim.disc_lr")
def _(lab, key):
    gan = ("model.mode=vae_gan", "train.max_steps=2")
    a, b = lab.run(*gan).train("d/loss"), lab.run(*gan, f"{key}=0.01").train("d/loss")
    assert_differs_after_first_step(a, b)
    rejects(key, 0.0)


# ---------------------------------------------------------------------------------------------------------
# train
@probe("train.epochs")
def _(lab, key):
    one, two = lab.run("train.max_steps=0", f"{key}=1"), lab.run("train.max_steps=0", f"{key}=2")
    assert (one.state["step"], two.state["step"]) == (3, 6)
    assert (one.state["epoch"], two.state["epoch"]) == (1, 2)
    rejects(key, 0)


@probe("train.max_steps")
def _(lab, key):
    r = lab.run(f"{key}=2")
    assert lab.base().state["step"] == 4 and r.state["step"] == 2 and r.state["total_steps"] == 2
    rejects(key, -1)


@probe("train.seed")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=1")
    assert r.train()[1] != base.train()[1] and r.val() != base.val()
    assert r.state["seed"] == 1
    rejects(key, 1.5)


@probe("train.mixed_precision")
def _(lab, key):
    base, r = lab.base(), lab.run(f"{key}=bf16")
    assert r.rc == 0 and r.train()[1] != base.train()[1]
    rejects(key, "fp16")


@probe("train.patience")
def _(lab, key):
    # a learning rate far too high and no clipping: the validation loss soon stops improving (lr 5 kept
    # improving once windows carried their state and the sounding-notes feature came in; at lr 30 one measured
    # run gave 12329, 3601, 5228, 4028, 3965, 3792: no new best after step 2)
    noisy = ("optim.lr=30", "optim.grad_clip=0", "optim.warmup_steps=0", "train.val_every_steps=1", "train.max_steps=0")
    never, one = lab.run(*noisy), lab.run(*noisy, f"{key}=1")
    vals = [v for _, v in sorted(never.val().items())]
    assert never.state["step"] == 6 and any(b >= min(vals[:i]) for i, b in enumerate(vals) if i)  # no new best
    assert one.state["step"] < 6 and one.rc == 0
    meta = json.loads((one.out / "checkpoints" / "stage1" / Path(one.state["last_checkpoint"]).name
                       / "meta.json").read_text())
    assert meta["early_stopped"] is True
    rejects(key, -1)


@probe("train.val_every_steps")
def _(lab, key):
    assert sorted(lab.base().val()) == [3, 4]  # epoch ends only
    assert sorted(lab.run(f"{key}=1").val()) == [1, 2, 3, 4]
    rejects(key, -1)


@probe("train.max_val_batches")
def _(lab, key):
    base, one = lab.base(), lab.run(f"{key}=1")  # the tiny config validates on 2 batches
    assert one.val()[3] != base.val()[3]
    assert one.train() == base.train()  # validation does not touch training
    rejects(key, -1)


@probe("train.compile")
def _(lab, key):
    """The real trainer compiles the model (dynamo's graph counter moves), trains, and commits checkpoints with
    the eager model's keys (nn.Module.compile in place: no `_orig_mod.`). The slowest probe (inductor
    compiles the forward, backward and validation graphs: minutes on a loaded 2-core machine, cached by torch
    across runs); it is the one end-to-end run of train.compile."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # no dropout: compiled dropout draws its masks from inductor's own generator, not the eager stream
    same = ("train.max_steps=1", "model.dropout=0")
    r, eager = lab.run(f"{key}=true", *same), lab.run(*same)
    assert r.rc == 0 and r.state["step"] == 1, r.stderr[-2000:]
    assert counters["stats"]["unique_graphs"] >= 1
    keys = sorted(step_weights(eager, 1))
    assert sorted(step_weights(r, 1)) == keys and len(keys) > 10
    # the same function: the first loss as the eager run's up to the compiled kernels' rounding (the bound of
    # tests/test_speed.py::test_compile_in_place_keeps_the_state_dict)
    assert abs(r.train()[1] - eager.train()[1]) < 1e-4, (r.train()[1], eager.train()[1])
    rejects(key, "yes")


@probe("train.activation_checkpointing")
def _(lab, key):
    """Through the real trainer: the bytes the autograd graph keeps for backward passes over a 1-step run
    (validation runs without grad), at most half with the key on (tests/test_speed.py measures 0.10x for a
    small transformer; the tiny stage 1 kept 5.2 MB without it)."""
    kept = {}
    for on in ("false", "true"):
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            r = lab.run(f"{key}={on}", "train.max_steps=1")
        assert r.rc == 0
        kept[on] = sum(sizes)
    assert 0 < kept["true"] <= 0.5 * kept["false"], kept
    rejects(key, 1)


@probe("train.stop_margin_s")
def _(lab, key):
    env = {"SLURM_JOB_END_TIME": lab.slurm_end}  # the job ends in an hour
    calm, urgent = lab.run(f"{key}=0", env=env), lab.run(f"{key}=7200", env=env)
    assert calm.rc == 0 and calm.state["status"] == "completed" and calm.state["step"] == 4
    assert urgent.rc == STOPPED_EXIT == 75
    assert urgent.state["status"] == "stopped" and urgent.state["step"] < 4 and urgent.checkpoints()
    rejects(key, -1.0)


# ---------------------------------------------------------------------------------------------------------
# checkpoint
@probe("checkpoint.every_steps")
def _(lab, key):
    assert lab.run("checkpoint.keep=3").checkpoints() == [3, 4]  # epoch end and the last step
    assert lab.run("checkpoint.keep=3", f"{key}=1").checkpoints() == [2, 3, 4]
    rejects(key, -1)


@probe("checkpoint.keep")
def _(lab, key):
    assert lab.run("checkpoint.every_steps=1").checkpoints() == [3, 4]
    assert lab.run("checkpoint.every_steps=1", f"{key}=3").checkpoints() == [2, 3, 4]
    rejects(key, 1)


# ---------------------------------------------------------------------------------------------------------
# logging
# one run changes three logging keys: each acts on its own output
LOGGING_CHANGED = ("logging.tracker=tensorboard", "logging.log_every_steps=3", "logging.progress_bar=true")


@probe("logging.tracker")
def _(lab, key):
    assert not (lab.base().out / "logs" / "tensorboard").exists()
    r = lab.run(*LOGGING_CHANGED)
    assert list((r.out / "logs" / "tensorboard" / "stage1").glob("events.out.tfevents.*"))
    rejects(key, "mlflow")


@probe("logging.log_every_steps")
def _(lab, key):
    assert sorted(lab.base().train()) == [1, 2, 3, 4]
    assert sorted(lab.run(*LOGGING_CHANGED).train()) == [1, 3]  # the first step is always logged
    rejects(key, 0)


@probe("logging.progress_bar")
def _(lab, key):
    base, r = lab.base(), lab.run(*LOGGING_CHANGED)
    assert "stage 1" not in base.stderr
    assert "stage 1: 100%" in r.stderr and "4/4" in r.stderr and "loss=" in r.stderr
    rejects(key, "yes")


@probe("logging.wandb_project")
def _(lab, key):
    pytest.importorskip("wandb")
    wandb_home = lab.fresh_dir("wandb_home")
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off", "WANDB_API_KEY": None,
           **{v: str(wandb_home / v.lower()) for v in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR")}}
    r = lab.run("logging.tracker=wandb", f"{key}=aurl-probe-project", env=env)
    assert r.rc == 0
    runs = list((r.out / "logs" / "wandb").glob("offline-run-*"))
    assert runs, "no offline W&B run written"
    blobs = b"".join(p.read_bytes() for p in runs[0].glob("*.wandb"))
    assert b"aurl-probe-project" in blobs
    rejects(key, 1)


# ---------------------------------------------------------------------------------------------------------
# eval: the stage-end evaluation
def samples(run: Run) -> list[bytes]:
    return [Path(f).read_bytes() for f in run.eval_json()["samples"]["files"]]


@probe("eval.enabled")
def _(lab, key):
    assert not (lab.base().out / "eval").exists()
    r = lab.run(*EVAL)
    assert r.eval_json()["stage"] == 1
    rejects(key, 1)


# one run changes three eval keys at once: each acts on its own part of the report
EVAL_CHANGED = (*EVAL, "eval.num_samples=3", "eval.length=16", "eval.max_val_tokens=300")


@probe("eval.num_samples")
def _(lab, key):
    base, r = lab.run(*EVAL), lab.run(*EVAL_CHANGED)
    assert base.eval_json()["samples"]["num"] == 2 and r.eval_json()["samples"]["num"] == 3
    assert len(list((r.out / "eval" / "stage1").glob("sample_*.mid"))) == 3
    rejects(key, -1)


@probe("eval.length")
def _(lab, key):
    base, r = lab.run(*EVAL), lab.run(*EVAL_CHANGED)
    assert base.eval_json()["samples"]["generated_tokens"] == 2 * 32
    assert r.eval_json()["samples"]["generated_tokens"] == 3 * 16
    rejects(key, 0)


@probe("eval.max_val_tokens")
def _(lab, key):
    base, r = lab.run(*EVAL), lab.run(*EVAL_CHANGED)
    assert base.eval_json()["validation"]["tokens"] > 1000
    assert 300 <= r.eval_json()["validation"]["tokens"] < 300 + 64
    rejects(key, -1)


@probe("eval.temperature")
def _(lab, key):
    assert samples(lab.run(*EVAL, f"{key}=0.3")) != samples(lab.run(*EVAL))
    rejects(key, -1.0)


@probe("eval.top_p")
def _(lab, key):
    assert samples(lab.run(*EVAL, f"{key}=0.2")) != samples(lab.run(*EVAL))
    rejects(key, 0.0)
