"""The error every data problem is reported with."""
from __future__ import annotations

import os


class DataError(Exception):
    """A data file or folder cannot be used.

    The message is one line, ``"<path>: <problem>"``, so it can be grepped from a log and pasted
    into a shell. ``DataError(message)`` with a single argument is also accepted.
    """

    def __init__(self, path: str | os.PathLike, problem: str | None = None):
        self.path = os.fspath(path) if problem is not None else None
        self.problem = problem
        text = str(path) if problem is None else f"{os.fspath(path)}: {problem}"
        super().__init__(" ".join(text.splitlines()))  # one line, whatever the cause text held


def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a text file, or DataError "<path>: cannot read <what> (<reason>)"."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(path, f"cannot read {what} ({getattr(err, 'strerror', None) or err})") from None
