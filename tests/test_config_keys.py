"""Every config key is used: changing it changes what the code does, or a bad value is refused naming it.

The keys are collected from every YAML under configs/training_configs/ and from every field of the config
dataclasses; each has a probe (``@probe("section.key")``) in tests/test_config_keys_<section>.py (the probe
of optim.lr is in test_config_keys_optim.py; its test is test_key_is_used[optim.lr]), and a key without one
fails ``test_every_key_has_a_probe`` by name. A probe observes the key through the code that uses it:

- model: the built MusicTransformerVAEGAN (parameter count, or its forward output / metrics / gradients
  with the very same weights);
- augment: aurl.data.augment.augment_tokens at fixed (seed, epoch, index) draws, and one real run;
- data, optim, train, checkpoint, logging, eval: short real runs of the tiny stage 1 in this process
  (load_pipeline + run_pipeline, exactly what `python -m aurl.train` calls), compared with a run that
  differs only in the probed key (or in a group of keys that act on separate outputs): checkpoints on disk,
  training_state.json, logs/metrics.jsonl, the progress bar on stderr, TensorBoard / W&B files,
  eval/stage1/eval.json, the exit code.

Runs are memoized per (overrides, env) for the session, and the tokenized corpus is built once
(tests/config_probes.py).
"""

from __future__ import annotations

import importlib

from config_probes import ALL_KEYS, PROBES, dataclass_keys, yaml_keys

SECTIONS = ("data", "model", "augment", "optim", "train", "checkpoint", "logging", "eval")
for _section in SECTIONS:  # their @probe registrations fill PROBES
    importlib.import_module(f"test_config_keys_{_section}")


def test_every_key_has_a_probe():
    missing = [k for k in ALL_KEYS if k not in PROBES]
    assert not missing, (f"config keys without a probe in tests/test_config_keys_<section>.py: {', '.join(missing)} "
                         "(add an @probe showing that changing the key changes behaviour, or remove the key)")


def test_no_probe_for_a_key_that_is_gone():
    stale = sorted(set(PROBES) - set(ALL_KEYS))
    assert not stale, f"probes for keys that no YAML or config dataclass has: {', '.join(stale)}"


def test_shipped_yamls_are_found():
    assert {"data.seq_len", "model.mode", "augment.enabled", "optim.lr", "train.epochs", "checkpoint.keep",
            "logging.tracker", "eval.enabled"} <= yaml_keys()
    assert yaml_keys() <= dataclass_keys(), sorted(yaml_keys() - dataclass_keys())


def test_baseline_run_is_deterministic(lab):
    """Differences in the probes below come from the key, not from run-to-run noise."""
    a, b = lab.base(), lab.run(env={"AURL_PROBE_CONTROL": "1"})
    assert a.rc == b.rc == 0
    assert a.train() == b.train() and a.val() == b.val()
    assert a.checkpoints() == b.checkpoints() == [3, 4]  # 3 steps per epoch; keep 2
    assert sorted(a.train()) == [1, 2, 3, 4] and sorted(a.val()) == [3, 4]
