"""Probes of the data: real runs of the tiny stage 1 (the corpus, the split, the windows).

How probes work, and the keys' coverage: tests/test_config_keys.py.
"""

from __future__ import annotations

import pytest
from config_probes import (
    keys_of,
    probe,
    rejects,
    run_probe,
)
from midi_factory import write_simple_midi

from aurl import vocab
from aurl.config import build_config
from aurl.console import UserError
from aurl.data.token_cache import TokenCache


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


@pytest.mark.parametrize("key", keys_of("data"))
def test_key_is_used(key, lab):
    run_probe(key, lab)
