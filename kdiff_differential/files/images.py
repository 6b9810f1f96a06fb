"""Image files: an image or a change map read, an image written atomically in the format
its extension names. Images travel as uint8 arrays (H, W, 3) (maps as (H, W)). PIL is
imported inside the functions, so that importing the package stays light.

Lossless formats (an image written in one reads back byte for byte, in Pillow 12):
PNG, WebP (written losslessly here), TIFF, BMP, PPM, TGA, SGI, PCX, QOI, IM, DDS, EPS
and JPEG 2000 (Pillow writes it reversibly). Every other format Pillow writes loses pixels,
and :func:`write_image` says so with a :class:`LossyWarning`: JPEG (and MPO), AVIF and
PDF compress lossily, GIF keeps 256 colours, ICO and ICNS store icon sizes.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import Tensor

from ..errors import InputError, LossyWarning
from .atomic import write_atomically

# Pillow's formats that :func:`write_image` writes losslessly (see the module's docstring).
LOSSLESS_FORMATS = frozenset({"PNG", "WEBP", "TIFF", "BMP", "DIB", "PPM", "TGA", "SGI", "PCX", "QOI", "IM", "DDS", "JPEG2000", "EPS"})
# The lossless suffixes a warning names.
LOSSLESS_NAMED = ".png, .webp, .tif or .bmp"
# What a lossy format does to the pixels.
_LOSSES = {"JPEG": "compresses lossily", "MPO": "compresses lossily (as JPEG)", "AVIF": "compresses lossily",
           "PDF": "compresses colour as JPEG", "GIF": "keeps 256 colours", "ICO": "stores icon sizes",
           "ICNS": "stores icon sizes", "SPIDER": "keeps one grey channel"}


def _open(path: str, read: Callable[[Any], Any], name: str) -> Any:
    """``read(image)`` of the image file at ``path``; an InputError naming ``name`` (the
    setting that gave the path) for a file that is not there or not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return read(image)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{name}={path}: no such file; give the path of an existing image") from None
    except UnidentifiedImageError:
        raise InputError(f"{name}={path}: not an image file (PNG, JPEG, WebP, ... that Pillow can read)") from None
    except (OSError, ValueError) as error:
        # Directories, unreadable files and truncated images all land here.
        raise InputError(f"{name}={path}: cannot read it as an image ({error.__class__.__name__}: {error})") from None


def read_image(path: str, name: str = "image") -> np.ndarray:
    """The image at ``path`` as RGB, uint8 (H, W, 3); alpha is dropped. Errors name the
    setting ``name`` that gave the path."""
    return _open(path, lambda image: np.array(image.convert("RGB")), name)


def _lossy_kind(image: Any, path: str) -> str:
    """What lossy compression the opened image file at ``path`` was stored with: "JPEG",
    "lossy WebP", "AVIF", or "" for none. Pillow does not tell a WebP's kind: its first
    bitstream chunk does ("VP8 " lossy, "VP8L" lossless)."""
    if image.format in ("JPEG", "MPO"):
        return "JPEG"
    if image.format == "AVIF":
        return "AVIF"
    if image.format == "WEBP":
        with open(path, "rb") as file:
            file.seek(12)  # after "RIFF", the size and "WEBP": chunks of fourcc, size (little-endian), data (padded to even)
            while len(header := file.read(8)) == 8:
                fourcc, size = header[:4], int.from_bytes(header[4:], "little")
                if fourcc in (b"VP8 ", b"VP8L"):
                    return "lossy WebP" if fourcc == b"VP8 " else ""
                file.seek(size + size % 2, 1)
    return ""


def read_map(path: str, name: str = "change_map") -> Tensor:
    """The change strengths of the map image at ``path``, float32 (H, W) in [0, 1], read
    by the range of its mode (8-bit, 16-bit, float, colour, alpha: see
    :func:`~kdiff_differential.maps.reading.image_strength`); InputError for a map out of range.

    A map stored lossily (JPEG, lossy WebP, AVIF) carries compression ripples around its
    edges: its values within :data:`~kdiff_differential.maps.reading.LOSSY_SNAP` (8/255)
    of 0 or 1 are read as exactly 0 or 1, and a :class:`LossyWarning` says that pixels
    next to an edge may still change a little (docs/cli.md, "Lossy map files"). Errors
    name the setting ``name`` that gave the path."""
    from ..maps.reading import LOSSY_SNAP, image_strength

    def read(image: Any) -> tuple[Tensor, str]:
        kind = _lossy_kind(image, path)
        try:
            return image_strength(image, name=f"{name}={path}", snap=LOSSY_SNAP if kind else 0.0), kind
        except ValueError as error:
            raise InputError(str(error)) from None

    strength, kind = _open(path, read, name)
    if kind:
        warnings.warn(f"{name}={path}: a {kind} map carries compression ripples around its edges; values within 8/255 of "
                      f"0 or 1 are read as 0 or 1, but pixels near an edge may still change a little; save the map "
                      f"as {LOSSLESS_NAMED} (lossless) to keep exactly what it says", LossyWarning, stacklevel=2)
    return strength


def output_format(path: str) -> str:
    """Pillow's format name for ``path``'s extension; InputError when it has none."""
    from PIL import Image

    extension = Path(path).suffix.lower()
    formats = Image.registered_extensions()
    if extension not in formats or formats[extension] not in Image.SAVE:
        raise InputError(f"{path}: unknown image extension {extension or '(none)'!r}; use .png, .jpg or .webp")
    return formats[extension]


def write_image(image: np.ndarray, path: str) -> None:
    """Write ``image`` (uint8 (H, W, 3) or (H, W)) to ``path`` atomically, in the format
    its extension names, so an interrupted run never leaves a truncated file behind.

    WebP is written losslessly (every pixel's RGB exact). A format that cannot hold the
    pixels exactly (not in :data:`LOSSLESS_FORMATS`: JPEG, GIF, ...) is written as asked,
    with one :class:`LossyWarning` naming the lossless ones."""
    from PIL import Image

    image_format = output_format(path)
    options = {"lossless": True, "exact": True} if image_format == "WEBP" else {}
    if image_format not in LOSSLESS_FORMATS:
        warnings.warn(f"{path}: {image_format} {_LOSSES.get(image_format, 'does not store every pixel exactly')}, so "
                      f"the written pixels, kept ones included, are not the image's bytes; write {LOSSLESS_NAMED} "
                      f"(lossless) to keep them exact", LossyWarning, stacklevel=2)
    write_atomically(path, lambda file: Image.fromarray(image).save(file, format=image_format, **options), binary=True)
