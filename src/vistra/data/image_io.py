"""Read any image file as an 8-bit RGB PIL image, or fail with a one-line DataError.

Pixel limit: an image whose header announces more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (Pillow's default,
89,478,485: about 9459 x 9459, or 256 MiB as RGB) is refused with DataError before anything is decoded, whatever
its file size, so a small file claiming 50000x50000 costs neither memory nor time. Raise that limit (or set it to
None) to read larger images; vistra refuses at the limit itself, where Pillow would only warn below twice it.
"""
from __future__ import annotations

import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vistra.data.errors import DataError

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


def read_image(path: str | os.PathLike) -> Image.Image:
    """Decode ``path`` fully and return it as an RGB image (8 bits per channel), upright.

    - Grayscale, bilevel, palette, CMYK and YCbCr images are converted to RGB.
    - Transparency (RGBA, LA, palette with a transparent colour) is composited over **black**:
      fully transparent pixels become (0, 0, 0), half transparent ones are darkened.
    - 16-bit images (modes ``I;16*`` and ``I``) are scaled 0..65535 -> 0..255 (rounded), not
      clipped; ``I`` values outside 0..65535 are clipped first. 16-bit RGB PNGs are reduced by
      Pillow itself when decoding. 32-bit float images (mode ``F``) are taken as 0..255 and
      clipped (Pillow's conversion).
    - The EXIF orientation tag is applied, so the result is the way a photo viewer shows it.
    - Images with more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels are refused before decoding
      (see the module doc).

    Raises:
        DataError: ``"<path>: cannot read image (<reason>)"`` for a missing, truncated or corrupt
            file, a non-image, a decompression bomb or an unsupported mode.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused below instead
            with Image.open(path) as image:
                check_pixel_limit(path, image)
                image.load()  # decode everything now, so truncation shows up here
                ImageOps.exif_transpose(image, in_place=True)
                return to_rgb(image)
    except DataError:
        raise
    except Exception as error:  # decoders raise many types on corrupt data; report them all alike
        raise DataError(path, f"cannot read image ({read_error_reason(error)})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image with the content of ``image`` (any Pillow mode); see ``read_image``."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = _high_depth_to_l(image)
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        return _over_black(image.convert("RGBA"))
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale -> 8-bit L, mapping 65535 to 255 with rounding."""
    values = np.asarray(image).astype(np.int64).clip(0, 65535)  # (H, W)
    return Image.fromarray(((values + 128) // 257).astype(np.uint8))


def _over_black(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image over an opaque black background; returns RGB."""
    black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
    return Image.alpha_composite(black, rgba).convert("RGB")


def check_pixel_limit(path: str | os.PathLike, image: Image.Image, what: str = "image") -> None:
    """DataError "cannot read <what> (decompression bomb ...)" if the opened (not yet decoded) `image` has more
    pixels than PIL.Image.MAX_IMAGE_PIXELS."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = image.size
    if limit is not None and width * height > limit:
        raise DataError(
            path,
            f"cannot read {what} (decompression bomb: {width}x{height} = {width * height} pixels, "
            f"limit {limit}; raise PIL.Image.MAX_IMAGE_PIXELS to allow it)",
        )


def read_error_reason(error: BaseException) -> str:
    """A short, one-line reason for a failure to open or decode an image file."""
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "is a directory"
    if isinstance(error, UnidentifiedImageError):
        return "not an image, or an unknown format"
    if isinstance(error, Image.DecompressionBombError):  # Pillow refused it while opening: over twice the limit
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{found[1]} pixels" if found else "too many pixels"
        limit = Image.MAX_IMAGE_PIXELS
        return f"decompression bomb: {pixels}, limit {limit}; raise PIL.Image.MAX_IMAGE_PIXELS to allow it"
    text = str(error) or type(error).__name__
    return text if isinstance(error, OSError) else f"{type(error).__name__}: {text}"
