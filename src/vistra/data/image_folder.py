"""Classification dataset over ``root/<class>/**/<image>`` folders, with optional bad-file skipping."""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable

from tqdm import tqdm

from vistra.data.errors import DataError
from vistra.data.image_io import read_image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageFolderDataset:
    """Images sorted into one folder per class, like ``torchvision.datasets.ImageFolder``.

    Class folders are the non-hidden subfolders of ``root``, sorted by name; images are found
    recursively inside each, by (case-insensitive) extension, sorted by path. Hidden files
    (``.name``, e.g. macOS ``._x.jpg``) and other extensions are ignored.

    Args:
        root: dataset folder.
        transform: applied to the RGB PIL image returned by ``read_image``.
        skip_bad: if False, an unreadable image raises ``DataError`` naming it, and an empty class
            folder raises at construction. If True, an empty class folder is dropped (so it is not
            in ``classes``; listed in ``empty_classes``), and an unreadable image is skipped when
            it is first read: ``dataset[i]`` then returns the next readable sample (``i+1``,
            ``i+2``, ... wrapping around) and ``skipped`` is incremented. Bad files are remembered
            in ``bad_files``; ``skipped`` counts every time a bad file was passed over. With
            DataLoader workers each worker process keeps its own copy of both.
        extensions: file endings that count as images.

    Attributes:
        classes: class names (folder names), sorted.
        class_to_idx: class name -> label.
        samples: list of (path, label), sorted by class then path.
        targets: the labels of ``samples``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable[[Any], Any] | None = None,
        skip_bad: bool = False,
        extensions: Iterable[str] = IMG_EXTENSIONS,
    ):
        self.root = Path(root)
        self.transform = transform
        self.skip_bad = skip_bad
        self.extensions = tuple(e.lower() for e in extensions)
        self.empty_classes: list[str] = []
        self.skipped = 0
        self._bad: dict[str, str] = {}  # path -> reason
        self.classes, self.samples = self._scan()
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.targets = [label for _, label in self.samples]

    @property
    def bad_files(self) -> list[str]:
        """Paths found unreadable so far (by ``__getitem__`` or ``validate``), sorted."""
        return sorted(self._bad)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        """(transformed image, label) of sample ``index``; see ``skip_bad`` for unreadable files."""
        if not self.skip_bad:
            path, label = self.samples[index]
            return self._load(path), label
        self.samples[index]  # IndexError for an out-of-range index, like a list
        n = len(self.samples)
        start = index % n
        for offset in range(n):
            path, label = self.samples[(start + offset) % n]
            if path in self._bad:
                self.skipped += 1
                continue
            try:
                return self._load(path), label
            except DataError as error:
                self._bad[path] = str(error)
                self.skipped += 1
        raise DataError(self.root, f"no readable image among {n} files (see dataset.bad_files)")

    def validate(self, progress: bool = True) -> dict[str, Any]:
        """Read every image once and return a summary; never raises for bad files.

        Returns a dict: ``root``, ``num_classes``, ``num_samples``, ``num_good``, ``num_bad``,
        ``bad_files`` (list of one-line error messages), ``empty_classes`` and ``per_class``
        (class -> number of readable images). Bad files are also recorded in ``bad_files``.
        """
        good: Counter[str] = Counter()
        bar = tqdm(self.samples, desc=f"validate {self.root.name}", unit="img", disable=not progress)
        for path, label in bar:
            try:
                read_image(path)
            except DataError as error:
                self._bad[path] = str(error)
                continue
            self._bad.pop(path, None)  # readable now (e.g. replaced since it failed)
            good[self.classes[label]] += 1
        bad = [self._bad[p] for p, _ in self.samples if p in self._bad]
        return {
            "root": str(self.root),
            "num_classes": len(self.classes),
            "num_samples": len(self.samples),
            "num_good": sum(good.values()),
            "num_bad": len(bad),
            "bad_files": bad,
            "empty_classes": list(self.empty_classes),
            "per_class": {name: good[name] for name in self.classes},
        }

    def _load(self, path: str) -> Any:
        image = read_image(path)
        return self.transform(image) if self.transform is not None else image

    def _scan(self) -> tuple[list[str], list[tuple[str, int]]]:
        """Find the class folders and their images; raise DataError for an unusable layout."""
        if not self.root.is_dir():
            problem = "is not a folder" if self.root.exists() else "dataset folder does not exist"
            raise DataError(self.root, problem)
        names = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not names:
            raise DataError(self.root, "no class folders (expected <root>/<class>/<image files>)")
        classes: list[str] = []
        samples: list[tuple[str, int]] = []
        for name in names:
            files = self._images_in(self.root / name)
            if not files:
                if not self.skip_bad:
                    raise DataError(
                        self.root / name,
                        f"class folder has no images (looked for {', '.join(self.extensions)})",
                    )
                self.empty_classes.append(name)
                continue
            samples.extend((f, len(classes)) for f in files)
            classes.append(name)
        if not classes:
            raise DataError(self.root, "every class folder is empty")
        return classes, samples

    def _images_in(self, folder: Path) -> list[str]:
        """Image files under ``folder`` (recursive, following links), sorted."""
        found = []
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            found.extend(
                os.path.join(dirpath, f)
                for f in filenames
                if not f.startswith(".") and f.lower().endswith(self.extensions)
            )
        return sorted(found)
