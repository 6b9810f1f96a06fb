"""Image files: an image or a change map read, an image written atomically in the format
its extension names. Images travel as uint8 arrays (H, W, 3) (maps as (H, W)). PIL is
imported inside the functions, so that importing the package stays light.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import Tensor

from ..errors import InputError
from .atomic import write_atomically


def _open(path: str, read: Callable[[Any], Any]) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return read(image)
    except InputError:
        raise
    except FileNotFoundError:
        raise InputError(f"{path}: no such file; give the path of an existing image") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image file (PNG, JPEG, WebP, ... that Pillow can read)") from None
    except (OSError, ValueError) as error:
        # Directories, unreadable files and truncated images all land here.
        raise InputError(f"{path}: cannot read it as an image ({error.__class__.__name__}: {error})") from None


def read_image(path: str) -> np.ndarray:
    """The image at ``path`` as RGB, uint8 (H, W, 3); alpha is dropped."""
    return _open(path, lambda image: np.array(image.convert("RGB")))


def read_map(path: str) -> Tensor:
    """The change strengths of the map image at ``path``, float32 (H, W) in [0, 1], read
    by the range of its mode (8-bit, 16-bit, float, colour, alpha: see
    :func:`~kdiff_differential.maps.reading.image_strength`); InputError for a map out of range."""
    from ..maps.reading import image_strength

    def read(image: Any) -> Tensor:
        try:
            return image_strength(image, name=path)
        except ValueError as error:
            raise InputError(str(error)) from None

    return _open(path, read)


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
    its extension names, so an interrupted run never leaves a truncated file behind."""
    from PIL import Image

    image_format = output_format(path)
    write_atomically(path, lambda file: Image.fromarray(image).save(file, format=image_format), binary=True)
