"""One rank-aware print helper and logger prefix for the whole package.

The rank is read from the environment variables every launcher sets (accelerate, torchrun, srun), so
this works before (and without) a process group.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

PREFIX = "[aurl]"


def process_rank() -> int:
    for var in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(var)
        if value is not None and value.isdigit():
            return int(value)
    return 0


def is_main_process() -> bool:
    return process_rank() == 0


def print0(*args, file=None, **kwargs) -> None:
    """print() on rank 0 only, with the aurl prefix."""
    if is_main_process():
        print(PREFIX, *args, file=file or sys.stdout, flush=True, **kwargs)


def warn(message: str) -> None:
    """A one-line warning on stderr (rank 0 only)."""
    if is_main_process():
        print(f"{PREFIX} warning: {message}", file=sys.stderr, flush=True)


class UserError(Exception):
    """Bad user input (a file, key or value). Entry points print it as one line and exit with code 2."""


USER_ERROR_EXIT = 2


def one_line(text: str) -> str:
    """text with its line breaks and runs of spaces folded into single spaces (a message quoted from a
    parser or a reader may span lines; the house style is one line per error)."""
    return " ".join(str(text).split())


def report_error(error: Exception | str) -> int:
    """Print a user error as the one line `[aurl] error: ...` on stderr; returns the exit code (2)."""
    print(f"{PREFIX} error: {one_line(str(error))}", file=sys.stderr, flush=True)
    return USER_ERROR_EXIT


def check_writable_folder(what: str, path: str | os.PathLike) -> None:
    """UserError when `path` (a folder to write into, existing or not) or a folder above it is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise UserError(f"{what} {path}: {p} is a file, not a folder")
            return


class ArgParser(argparse.ArgumentParser):
    """argparse with the house error style: a bad flag is one line on stderr and exit code 2 (argparse would
    print the whole usage first)."""

    def error(self, message: str):
        report_error(f"{message} (see {self.prog} --help)")
        raise SystemExit(USER_ERROR_EXIT)
