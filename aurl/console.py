"""One rank-aware print helper and logger prefix for the whole package.

The rank is read from the environment variables every launcher sets (accelerate, torchrun, srun), so
this works before (and without) a process group.
"""

from __future__ import annotations

import argparse
import os
import sys

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


class ArgParser(argparse.ArgumentParser):
    """argparse with the house error style: a bad flag is one line on stderr and exit code 2 (argparse would
    print the whole usage first)."""

    def error(self, message: str):
        print(f"{PREFIX} error: {message} (see --help)", file=sys.stderr, flush=True)
        raise SystemExit(2)
