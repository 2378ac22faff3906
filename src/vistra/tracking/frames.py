"""Frames to track, from a video file, a folder of images or a MOTChallenge sequence folder.

`open_frames(path)` returns a FrameSource: iterate it for Frame(index, name, image) in order. Frame numbers
are 1-based; in folders whose image names are numbers (MOTChallenge's img1/000001.jpg) they come from the
names, so a missing file shows as a gap (listed in `gaps`) rather than shifting every later frame. Unreadable
images are listed in `skipped` and left out (or, with skip_bad=False, stop the iteration with DataError).
A video that ends before the frame count its header announced stops there, and says so in `problems`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vistra.data.errors import DataError
from vistra.data.image_folder import IMG_EXTENSIONS
from vistra.data.image_io import read_image

from .mot_io import SEQINFO, read_seqinfo

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


@dataclass
class Frame:
    index: int  # 1-based frame number
    name: str  # file name, or "frame 000012" for a video
    image: Image.Image  # RGB


@dataclass
class FrameSource:
    """Frames of one sequence; iterate once. name: the sequence name (folder or video stem)."""

    path: Path
    name: str
    frame_rate: float
    skip_bad: bool = True
    skipped: list[str] = field(default_factory=list)  # "<file>: <problem>" of frames that could not be read
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (last frame before, first frame after) a gap
    problems: list[str] = field(default_factory=list)  # e.g. a video that ended early
    expected: int | None = None  # frame count announced by the source (folder size, video header)
    _files: list[tuple[int, Path]] = field(default_factory=list)

    def __iter__(self) -> Iterator[Frame]:
        frames = self._video() if self.path.is_file() else self._folder()
        previous = 0
        for frame in frames:
            if frame.index > previous + 1 and previous > 0:
                self.gaps.append((previous, frame.index))
            previous = frame.index
            yield frame

    def _folder(self) -> Iterator[Frame]:
        for index, path in self._files:
            try:
                image = read_image(path)
            except DataError as err:
                if not self.skip_bad:
                    raise
                self.skipped.append(str(err))
                continue
            yield Frame(index, path.name, image)

    def _video(self) -> Iterator[Frame]:
        capture = _open_video(self.path)
        import cv2

        try:
            index = 0
            while True:
                ok, bgr = capture.read()
                if not ok:
                    break
                index += 1
                yield Frame(index, f"frame {index:06d}", Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)))
            if self.expected and index < self.expected:
                self.problems.append(f"{self.path}: video ended after {index} of the {self.expected} frames "
                                     "its header announces")
        finally:
            capture.release()


def open_frames(path: str | os.PathLike, skip_bad: bool = True) -> FrameSource:
    """A FrameSource for a video file, an image folder or a MOTChallenge sequence (folder with seqinfo.ini)."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            raise DataError(path, f"not a video file (known extensions: {', '.join(VIDEO_EXTENSIONS)}) or a folder "
                                  "of frames")
        capture = _open_video(path)
        import cv2

        fps, count = capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
        capture.release()
        return FrameSource(path, path.stem, fps if fps > 0 else 30.0, skip_bad, expected=count if count > 0 else None)
    if not path.is_dir():
        raise DataError(path, "video file or frame folder does not exist")
    name, rate, folder = path.name, 30.0, path
    if (path / SEQINFO).is_file():
        info = read_seqinfo(path)
        name, rate, folder = info.name, info.frame_rate, path / info.im_dir
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS) \
        if folder.is_dir() else []
    if not files:
        raise DataError(folder, "holds no image files to track")
    return FrameSource(path, name, rate, skip_bad, expected=len(files), _files=_numbered(files))


def _numbered(files: list[Path]) -> list[tuple[int, Path]]:
    """[(frame number, file)]: the number in each name when every name holds exactly one number, else 1, 2, ..."""
    numbers = [re.findall(r"\d+", p.stem) for p in files]
    if all(len(n) == 1 for n in numbers) and len({int(n[0]) for n in numbers}) == len(files):
        indexed = sorted((int(n[0]), p) for n, p in zip(numbers, files))
        shift = 1 - indexed[0][0] if indexed[0][0] < 1 else 0  # 0-based names count from 1
        return [(i + shift, p) for i, p in indexed]
    return list(enumerate(files, start=1))


def _open_video(path: Path):
    try:
        import cv2
    except ImportError:
        raise DataError(path, "reading video files needs OpenCV (pip install opencv-python-headless); or pass a "
                              "folder of frames") from None
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise DataError(path, "cannot open video (unknown format, or not a video)")
    return capture
