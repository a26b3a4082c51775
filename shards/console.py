"""What every stage's command line shares: one-line errors with exit status 2, logging, progress.

It lives in `shards` because that is the one package every stage may import.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from shards.schema import SchemaError

EXIT_USAGE = 2
# Set by a launcher for the processes it starts (torchrun's ranks): the file where they record
# their user errors, so that the launcher reports one line of its own instead of torchrun's
# ChildFailedError traceback; and whether the launcher's stderr is a terminal (for progress bars).
WORKER_ERRORS = "IIPA_WORKER_ERRORS"
PROGRESS = "IIPA_PROGRESS"


class UserError(ValueError):
    """A mistake of the user's (bad option, missing or malformed input): one line, exit 2."""


# Exceptions that mean "the input or the options are wrong", never a bug of ours. The OSErrors
# name a path the user gave (a file where a folder must be, a folder where a file must be, a
# place we may not write): a backstop behind check_out, for paths no check foresaw.
PATH_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError, PermissionError)
USER_ERRORS: tuple[type[BaseException], ...] = (UserError, SchemaError, *PATH_ERRORS)


def check_out(path: str | os.PathLike, flag: str = "--out", folder: bool | None = True) -> None:
    """Refuse, before any work, an output path that cannot be written: a regular file in the
    place of one of its folders, or the path itself of the wrong kind (folder=True: it must be
    a folder, False: a file, None: either)."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise UserError(f"{flag} {path}: is a file, not a folder")
        if folder is False and path.is_dir():
            raise UserError(f"{flag} {path}: is a folder, not a file")
        return
    for parent in path.parents:  # nearest first: the first that exists decides
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"{flag} {path}: {parent} is a file, not a folder")
            return


class Parser(argparse.ArgumentParser):
    """argparse that reports a wrong flag as one line (not usage + line) and exits with 2."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(EXIT_USAGE)


def run_main(handler: Callable[[argparse.Namespace], int | None], args: argparse.Namespace,
             prog: str, extra_user_errors: Sequence[type[BaseException]] = ()) -> int:
    """Run a command's handler, turning user errors into one line on stderr and exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    try:
        return handler(args) or 0
    except (*USER_ERRORS, *extra_user_errors) as exc:
        message = exc.strerror + f": {exc.filename}" if isinstance(exc, PATH_ERRORS) and exc.filename else exc
        if os.environ.get(WORKER_ERRORS):  # written before stderr: the launcher then drops what follows
            with open(os.environ[WORKER_ERRORS], "a", encoding="utf-8") as f:
                f.write(" ".join(str(message).split()) + "\n")
        sys.stderr.write(f"{prog}: error: {message}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write(f"{prog}: interrupted\n")
        return 130


def progress(iterable=None, **kwargs):
    """A tqdm bar on a terminal, silent otherwise (logs and CI stay readable)."""
    from tqdm import tqdm

    terminal = sys.stderr.isatty() or os.environ.get(PROGRESS) == "1"
    return tqdm(iterable, disable=not terminal, dynamic_ncols=True, **kwargs)
