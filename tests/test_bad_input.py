"""Bad input, as a new user meets it: one line on stderr naming the file, key, flag or value, exit code 2, and
the output folder exactly as it was before (no lock, no cache, no state, no empty folder).

MIDI is built here (midi_factory); a corrupt file is junk bytes or the first half of a real file.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from midi_factory import write_simple_midi

from aurl.model import ModelConfig, MusicTransformerVAEGAN
from aurl.model.checkpoint import save_model_file

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "training_configs" / "tiny"


# ---------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------
def terminal_lines(stderr: str) -> list[str]:
    """The non-empty lines a terminal would show: a progress bar redrawn with \\r keeps only its last state
    (and one closed with leave=False, none)."""
    shown = (line.rsplit("\r", 1)[-1] for line in stderr.split("\n"))
    return [line for line in shown if line.strip()]


def assert_one_line(stderr: str, *names: str) -> str:
    lines = terminal_lines(stderr)
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    assert lines[0].startswith(("[aurl] error: ", "error: ")), lines[0]  # aurl.train: no prefix (test_deepspeed)
    for name in names:
        assert name in lines[0], f"{name!r} not named in: {lines[0]}"
    return lines[0]


def listing(folder: Path) -> dict[str, str] | None:
    """Every path under folder with its content hash ("dir" for folders); None when folder does not exist."""
    if not folder.exists():
        return None
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli(module: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, env=env, cwd=cwd,
                       timeout=300)
    # decoded by hand: text=True would turn a progress bar's \r into line breaks
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def unusable_folder(root: Path, kind: str) -> tuple[Path, int]:
    """A MIDI folder without one usable file: (folder, number of .mid files in it)."""
    data = root / f"data-{kind}"
    data.mkdir()
    (data / "readme.txt").write_text("not MIDI")
    if kind == "no-midi":
        return data, 0
    real = write_simple_midi(root / "real.mid", seed=1, n_notes=40).read_bytes()
    (data / "junk.mid").write_bytes(b"\x00\xffnot midi at all" * 20)
    (data / "sub").mkdir()
    (data / "sub" / "truncated.mid").write_bytes(real[: len(real) // 2])
    (data / "empty.midi").write_bytes(b"")
    if kind == "one-usable":  # enough for a cache, not for training: nothing left for validation
        write_simple_midi(data / "good.mid", seed=2, n_notes=60)
    return data, 3


def existing_output(root: Path) -> Path:
    """An output folder that already holds something of the user's."""
    out = root / "run"
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("mine")
    return out


def run_main(main, argv: list[str], capsys) -> tuple[int, str]:
    """An entry point's main(argv) in this process: (exit code, stderr with the warnings a user would see)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # as python prints them by default: once per place
        try:
            code = main(argv)
        except SystemExit as e:  # argparse errors leave through SystemExit
            code = e.code
    shown = "".join(warnings.formatwarning(w.message, w.category, w.filename, w.lineno) for w in caught)
    return code, capsys.readouterr().err + shown


# ---------------------------------------------------------------------------------------------------------
# a data folder without one usable file
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["corrupt-files", "no-midi"])
@pytest.mark.parametrize("where", ["new-output-dir", "existing-output-dir", "existing-folder-as-cache"])
def test_data_build_on_unusable_folder_exits_2_and_writes_no_cache(tmp_path, kind, where):
    data, n = unusable_folder(tmp_path, kind)
    out = existing_output(tmp_path) if where != "new-output-dir" else tmp_path / "run"
    target = ["--cache", out / "notes"] if where == "existing-folder-as-cache" else ["--output-dir", out]
    before = listing(out)
    r = cli("aurl.data", "build", "--data", data, *target, "--workers", "0")  # progress bar on
    assert r.returncode == 2, r.stderr
    line = assert_one_line(r.stderr, str(data))
    assert (f"{n} of {n} files skipped" in line) if n else ("no .mid/.midi file" in line)
    assert listing(out) == before


def test_data_build_on_unusable_folder_leaves_an_existing_cache_alone(tmp_path):
    good = tmp_path / "good"
    for i in range(3):
        write_simple_midi(good / f"p{i}.mid", seed=i)
    cache = tmp_path / "cache"
    assert cli("aurl.data", "build", "--data", good, "--cache", cache, "--workers", "0", "--no-progress").returncode == 0
    before = listing(cache)
    assert any(k.startswith("shards/") for k in before)
    data, n = unusable_folder(tmp_path, "corrupt-files")
    r = cli("aurl.data", "build", "--data", data, "--cache", cache, "--workers", "0", "--no-progress")
    assert r.returncode == 2
    assert_one_line(r.stderr, str(data), f"{n} of {n} files skipped")
    assert listing(cache) == before  # neither its manifest nor its shards were touched


@pytest.mark.slow
@pytest.mark.parametrize("kind, where, says", [
    ("corrupt-files", "existing-output-dir", "3 of 3 files skipped"),
    ("no-midi", "new-output-dir", "no .mid/.midi file"),
    ("one-usable", "new-output-dir", "only 1 usable MIDI file (3 skipped); training needs at least 2 pieces"),
], ids=["corrupt-files-existing-output-dir", "no-midi-new-output-dir", "one-usable-new-output-dir"])
def test_train_on_unusable_folder_says_why_and_leaves_nothing(tmp_path, kind, where, says):
    data, _ = unusable_folder(tmp_path, kind)
    out = existing_output(tmp_path) if where == "existing-output-dir" else tmp_path / "run"
    before = listing(out)
    r = cli("aurl.train", "--config", TINY, "--output-dir", out, "--data", data)
    assert r.returncode == 2, r.stderr
    line = assert_one_line(r.stderr, str(data), says)
    assert "split" not in line  # the cause, not a consequence ("the 'val' split has no pieces")
    assert listing(out) == before  # no training.lock, cache/, training_state.json, logs/


@pytest.mark.slow
def test_a_failed_start_that_updated_the_cache_keeps_it_whole(tmp_path):
    """The cache of the output dir is brought up to date (a new shard, a new manifest, the old shard
    reclaimed), then training is refused (one piece only). Taking back only the new shard would leave a
    manifest pointing at nothing: the cleanup keeps what goes with a changed file."""
    from aurl.data.token_cache import TokenCache

    data, out = tmp_path / "data", tmp_path / "run"
    write_simple_midi(data / "a.mid", seed=1, n_notes=60)
    assert cli("aurl.data", "build", "--data", data, "--output-dir", out, "--workers", "0",
               "--no-progress").returncode == 0
    (data / "a.mid").unlink()
    write_simple_midi(data / "b.mid", seed=2, n_notes=60)
    r = cli("aurl.train", "--config", TINY, "--output-dir", out, "--data", data)
    assert r.returncode == 2
    assert_one_line(r.stderr, str(data), "only 1 usable MIDI file")
    cache = TokenCache.open(out / "cache")
    assert [p["path"] for p in cache.pieces] == ["b.mid"]
    assert all(len(cache.tokens(p)) == p["length"] > 0 for p in cache.pieces)  # its shard is there


@pytest.mark.slow
def test_train_stage_without_its_inputs_leaves_nothing(tmp_path):
    out = existing_output(tmp_path)
    before = listing(out)
    r = cli("aurl.train", "--config", TINY, "--output-dir", out, "--stage", "2")
    assert r.returncode == 2
    assert_one_line(r.stderr, "stage 1", "--from-scratch")
    assert listing(out) == before


# ---------------------------------------------------------------------------------------------------------
# aurl.train: paths, configs and overrides (refused before anything is created)
# ---------------------------------------------------------------------------------------------------------
def _broken_config(tmp_path: Path, text: str | bytes) -> Path:
    folder = tmp_path / "cfg"
    folder.mkdir()
    for n in (1, 2, 3):
        (folder / f"stage{n}.yaml").write_text((TINY / f"tiny_stage{n}.yaml").read_text())
    bad = folder / "stage2.yaml"
    bad.write_bytes(text) if isinstance(text, bytes) else bad.write_text(text)
    return folder


TRAIN_CASES = {
    "missing-data": (lambda t: ["--data", str(t / "missing")], ["--data", "missing", "no such folder"]),
    "output-dir-is-a-file": (lambda t: ["--output-dir", str(t / "afile")], ["--output-dir", "afile", "is a file"]),
    "config-folder-without-yamls": (lambda t: ["--config", str(t / "notes")], ["--config", "stage 1", "found none"]),
    "non-numeric-override": (lambda t: ["train.epochs=two"], ["train.epochs", "'two'"]),
    "non-numeric-optional-override": (lambda t: ["data.corpus_limit=many"], ["data.corpus_limit", "'many'"]),
    "unknown-override-key": (lambda t: ["train.epochz=2"], ["train.epochz"]),
    "override-without-section": (lambda t: ["epochs=2"], ["'epochs=2'", "section.key=value"]),
    "yaml-unclosed-bracket": (lambda t: ["--config", str(_broken_config(t, "train:\n  epochs: [1, 2\n"))],
                              ["stage2.yaml, line 3, column 1", "expected ',' or ']'", "line 2, column 11"]),
    "yaml-tab": (lambda t: ["--config", str(_broken_config(t, "train:\n\tepochs: 2\n"))],
                 ["stage2.yaml, line 2, column 1", "tab"]),
    "yaml-bad-indent": (lambda t: ["--config", str(_broken_config(t, "train:\n  epochs: 2\n   seed: 3\n"))],
                        ["stage2.yaml, line 3, column 8", "mapping values are not allowed"]),
    "yaml-binary": (lambda t: ["--config", str(_broken_config(t, b"\xff\xfe\x00junk"))], ["stage2.yaml", "UTF-8"]),
    "unknown-flag": (lambda t: ["--epochs", "3"], ["--epochs", "see python -m aurl.train --help"]),
    "bad-choice": (lambda t: ["--stage", "4"], ["--stage", "4"]),
}


@pytest.mark.parametrize("case", list(TRAIN_CASES))
def test_train_refuses_bad_input_in_one_line_before_any_work(tmp_path, capsys, monkeypatch, case):
    from aurl.train.__main__ import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("a file where a folder should be")
    (tmp_path / "notes").mkdir()
    argv_of, names = TRAIN_CASES[case]
    argv = argv_of(tmp_path)
    if "--config" not in argv:
        argv += ["--config", str(TINY)]
    out = tmp_path / "run"
    if "--output-dir" not in argv:
        argv += ["--output-dir", str(out)]
    before = listing(tmp_path)
    code, err = run_main(main, argv, capsys)
    assert code == 2
    assert_one_line(err, *names)
    assert listing(tmp_path) == before  # not even the output folder


# ---------------------------------------------------------------------------------------------------------
# every CLI: a bad flag or value is one line and exit code 2
# ---------------------------------------------------------------------------------------------------------
def _mains():
    from aurl import bench, generate, slurm
    from aurl.data import __main__ as data
    from aurl.evaluate import __main__ as evaluate

    return {"data": data.main, "generate": generate.main, "evaluate": evaluate.main, "slurm": slurm.main,
            "bench": bench.main}


FLAG_CASES = [
    ("data", [], ["command"]),
    ("data", ["convert"], ["'convert'"]),
    ("data", ["build", "--bogus"], ["--bogus", "--help"]),
    ("data", ["build", "--workers", "x"], ["--workers", "'x'"]),
    ("data", ["build", "--workers", "-1"], ["--workers", "-1"]),
    ("data", ["build", "--timeout", "0"], ["--timeout", "0"]),
    ("data", ["build", "--val-fraction", "1"], ["--val-fraction", "1"]),
    ("data", ["build", "--corpus-limit", "1"], ["--corpus-limit", "1"]),
    ("data", ["build", "--data", "{tmp}/missing"], ["--data", "missing"]),
    ("data", ["build", "--data", "{tmp}", "--output-dir", "{tmp}/afile"], ["afile", "is a file"]),
    ("data", ["info", "--cache", "{tmp}/nocache"], ["nocache", "no token cache"]),
    ("data", ["info", "--seq-len", "1"], ["--seq-len", "1"]),
    ("data", ["info", "--epochs", "zero"], ["--epochs", "'zero'"]),
    ("generate", [], ["--checkpoint"]),
    ("generate", ["--checkpoint", "{ckpt}", "--length", "x"], ["--length", "'x'"]),
    ("generate", ["--checkpoint", "{ckpt}", "--length", "0"], ["--length", "0"]),
    ("generate", ["--checkpoint", "{ckpt}", "--out", "{tmp}/afile"], ["--out", "afile", "is a file"]),
    ("generate", ["--checkpoint", "{ckpt}", "--mode", "sideways"], ["--mode", "'sideways'"]),
    ("evaluate", [], ["--checkpoint"]),
    ("evaluate", ["--checkpoint", "{ckpt}", "--num-samples", "-1"], ["--num-samples", "-1"]),
    ("evaluate", ["--checkpoint", "{ckpt}", "--top-p", "x"], ["--top-p", "'x'"]),
    ("evaluate", ["--checkpoint", "{ckpt}", "--out", "{tmp}/afile/eval"], ["--out", "afile", "is a file"]),
    ("evaluate", ["--checkpoint", "{ckpt}", "--losses", "{tmp}/missing.jsonl"], ["--losses", "missing.jsonl"]),
    ("evaluate", ["--checkpoint", "{ckpt}", "--losses", "{tmp}/binary"], ["--losses", "binary", "not a JSONL"]),
    ("generate", ["--checkpoint", "{ckpt}", "--prompt", "{tmp}/missing.mid"], ["--prompt", "missing.mid"]),
    ("generate", ["--checkpoint", "{ckpt}", "--prompt", "{tmp}/binary"], ["--prompt", "binary", "cannot read"]),
    ("slurm", [], ["command"]),
    ("slurm", ["stage-done", "--output-dir", "{tmp}", "--stage", "two"], ["--stage", "'two'"]),
    ("slurm", ["record", "--output-dir", "{tmp}"], ["--job"]),
    ("bench", ["--bogus"], ["--bogus"]),
    ("bench", ["--only", "nothing"], ["--only", "nothing"]),
    ("bench", ["--timeout", "x"], ["--timeout", "'x'"]),
]


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    cfg = ModelConfig(mode="transformer", d_model=16, n_layers=1, n_heads=2, d_ff=32, max_seq_len=32, dropout=0.0)
    torch.manual_seed(0)
    return save_model_file(tmp_path_factory.mktemp("model") / "best_model.pt", MusicTransformerVAEGAN(cfg), cfg)


@pytest.mark.parametrize("cli_name, argv, names", FLAG_CASES,
                         ids=[f"{c}-{'-'.join(a).replace('{tmp}/', '').replace('{ckpt}', 'ckpt') or 'nothing'}"
                              for c, a, _ in FLAG_CASES])
def test_every_cli_says_a_bad_flag_in_one_line(tmp_path, capsys, model_file, cli_name, argv, names):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "binary").write_bytes(b"\xc0\xffMThd" * 10)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{ckpt}", str(model_file)) for a in argv]
    before = listing(tmp_path)
    code, err = run_main(_mains()[cli_name], argv, capsys)
    assert code == 2
    assert_one_line(err, *names)
    assert listing(tmp_path) == before


def test_aurl_data_flag_error_through_python_m(tmp_path):
    """The module entry point itself (the one that used to print argparse's usage block)."""
    r = cli("aurl.data", "build", "--workers", "x", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == ""
    assert_one_line(r.stderr, "--workers", "'x'")


# ---------------------------------------------------------------------------------------------------------
# a model file that is not one
# ---------------------------------------------------------------------------------------------------------
def _bad_model_file(tmp_path: Path, real: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.pt"
    if kind == "truncated":
        data = real.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "junk":
        path.write_bytes(b"\x80\x04junk" * 50)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "folder":
        path.mkdir()
    return path


@pytest.mark.parametrize("cli_name", ["generate", "evaluate"])
@pytest.mark.parametrize("kind, says", [("truncated", "corrupt or truncated"), ("junk", "corrupt or truncated"),
                                        ("empty", "corrupt or truncated"), ("folder", "a folder, not a model file"),
                                        ("missing", "no such file")])
def test_generate_and_evaluate_refuse_a_broken_model_file(tmp_path, capsys, model_file, cli_name, kind, says):
    path = _bad_model_file(tmp_path, model_file, kind)
    out = tmp_path / "out"
    before = listing(tmp_path)
    code, err = run_main(_mains()[cli_name], ["--checkpoint", str(path), "--out", str(out)], capsys)
    assert code == 2
    line = assert_one_line(err, str(path), says)
    assert "weights_only" not in line  # torch's advice to load untrusted pickles is not passed on
    assert listing(tmp_path) == before
