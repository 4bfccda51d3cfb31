"""aurl.console: the house style of messages. A user error is one line `[aurl] error: ...` on stderr and exit
code 2, a bad flag too (not argparse's usage); print0 and warn speak on rank 0 only; a folder to write into
under a file is refused naming the file."""

from __future__ import annotations

import pytest

from aurl.console import (
    USER_ERROR_EXIT,
    ArgParser,
    UserError,
    check_writable_folder,
    print0,
    process_rank,
    report_error,
    warn,
)


def test_an_error_is_one_line_on_stderr_and_exit_2(capsys):
    """Mutation: report_error printing the message as it is (no one_line) -> fails."""
    assert report_error(UserError("bad value\n  in   file.yaml\n")) == USER_ERROR_EXIT == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == "[aurl] error: bad value in file.yaml\n"
    parser = ArgParser(prog="aurl-x")
    parser.add_argument("--steps", type=int, required=True)
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--steps", "many"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith("[aurl] error: argument --steps: invalid int value")
    assert err.endswith("(see aurl-x --help)\n") and len(err.splitlines()) == 1


@pytest.mark.parametrize("env, rank", [({}, 0), ({"RANK": "3"}, 3), ({"SLURM_PROCID": "2"}, 2),
                                       ({"RANK": "1", "SLURM_PROCID": "0"}, 1), ({"RANK": "x"}, 0)])
def test_only_rank_0_speaks(monkeypatch, capsys, env, rank):
    """Mutation: process_rank ignoring SLURM_PROCID -> fails (srun sets only that)."""
    for var in ("RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert process_rank() == rank
    print0("hello", 1)
    warn("careful")
    captured = capsys.readouterr()
    if rank == 0:
        assert captured.out == "[aurl] hello 1\n" and captured.err == "[aurl] warning: careful\n"
    else:
        assert captured.out == captured.err == ""


def test_a_folder_under_a_file_is_refused_naming_the_file(tmp_path):
    """Mutation: only the folders above the path checked, not the path itself -> fails (--out a file)."""
    (tmp_path / "run").write_text("not a folder")
    check_writable_folder("--out", tmp_path / "new" / "deeper")  # missing folders are fine: created later
    with pytest.raises(UserError, match=f"--out {tmp_path}/run/ckpt: {tmp_path}/run is a file, not a folder"):
        check_writable_folder("--out", tmp_path / "run" / "ckpt")
    with pytest.raises(UserError, match=f"--out {tmp_path}/run: {tmp_path}/run is a file, not a folder"):
        check_writable_folder("--out", tmp_path / "run")
