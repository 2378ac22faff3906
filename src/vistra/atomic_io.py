"""Crash-safe file writing: a file is either replaced completely or left as it was.

Every checkpoint, model file, metrics log and result json vistra writes goes through `atomic_path`: the data is
written to a temporary file in the target's folder (named ``.<name>.<random>.tmp``), flushed to disk, and renamed
over the target with `os.replace`. A crash or an exception mid-write leaves the previous file intact and, except
after a hard kill, no temporary file behind (`remove_stale_temp_files` cleans up after one).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write the new content of `path` to; it replaces `path` when the block ends
    without an exception, and is deleted otherwise. The parent folder is created if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=".tmp", dir=path.parent)
    os.close(fd)
    temp = Path(name)
    try:
        yield temp
        _fsync_file(temp)
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Replace `path` by `text` (UTF-8) atomically; returns the path."""
    with atomic_path(path) as temp:
        temp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Replace `path` by `obj` as JSON (with a final newline) atomically; returns the path."""
    return write_text_atomic(path, json.dumps(obj, indent=indent) + "\n")


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed write of `path` left behind; returns what was removed."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    stale = sorted(path.parent.glob(f"{_temp_prefix(path)}*.tmp"))
    for temp in stale:
        temp.unlink(missing_ok=True)
    return stale


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Persist a rename; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
