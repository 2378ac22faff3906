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
