"""File names read from dataset files (annotation jsons, split lists, seqinfo.ini) must stay inside the dataset.

A name that is absolute, or whose ``..`` parts climb above the folder it is relative to, is refused with a
DataError naming the file it came from, unless the caller opts in with ``allow_outside_root=True``. The check
is on the text of the name: symbolic links inside the dataset are followed as usual.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from vistra.data.errors import DataError


def leaves_root(name: str) -> bool:
    """Whether the relative file name `name` is absolute or climbs above its folder with ``..``."""
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return True
    depth = 0
    for part in name.replace("\\", "/").split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def inside_root(root: str | os.PathLike, name: str, source: str | os.PathLike, what: str,
                allow_outside_root: bool = False) -> Path:
    """``root / name``, or DataError(source, ...) when `name` leaves `root` (see the module doc).

    `what` says what the name is, for the message (e.g. "image id 3: file_name").
    """
    if not allow_outside_root and leaves_root(name):
        raise DataError(source, f"{what} {name!r} leaves the dataset root {root} (refused; pass "
                                "--allow-outside-root, or allow_outside_root=True in Python, if the dataset "
                                "really points there)")
    return Path(root) / name
