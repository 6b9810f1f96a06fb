"""Crop and stitch (``--crop auto|off``, ``--crop-padding``): run the model on the region
around the change only, at the model's resolution, and paste the result back.

For a large photo with a small edit, running the whole picture is slow, or (on the
built-in model, and where memory runs out) scaled down, so the edit loses resolution.
A1111's "only masked", InvokeAI and Krita instead edit the bounding box of the change
plus some context. Here, with ``auto`` (the default):

- the box is the bounding box of the pixels of strength > 0, widened on every side by
  ``padding`` times its longer side (at least MIN_PADDING pixels) and clipped to the image;
- when that box covers at most AUTO_FRACTION of the image, the model runs on the box
  alone, scaled to the model's native size (its area that of a native square; the
  built-in model has none and runs the box at the input's resolution), the result is
  scaled back to the box, composited with the box's map, and pasted into the input;
- otherwise (or with ``off``) the whole image is run as before.

Everything outside the box is the input's bytes; inside, the composite works as without
the crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..choices import CROPS
from ..maps.change_map import ChangeMap, MapLike
from ..maps.reading import strength_array

PADDING = 0.25  # of the box's longer side, on every side
MIN_PADDING = 16  # pixels: context the model sees around even a tiny region
AUTO_FRACTION = 0.5  # crop only when the box is at most this part of the image's area


@dataclass(frozen=True)
class Region:
    """Where the model runs: rows ``top:top + height`` and columns ``left:left + width``
    of an image of ``size`` = (H, W), scaled to ``work`` = (h, w) for the model. A region
    that is the whole image at its own size (``cropped`` False) leaves everything as it is.
    Pixels are an image (H, W, 3) or a clip's frames (T, H, W, 3), the box of each frame."""

    top: int
    left: int
    height: int
    width: int
    size: tuple[int, ...]
    work: tuple[int, int]

    @property
    def cropped(self) -> bool:
        return (self.height, self.width) != tuple(self.size)

    def cut(self, pixels: np.ndarray) -> np.ndarray:
        """The box of ``pixels``, (..., H, W, C)."""
        if not self.cropped:
            return pixels
        return pixels[..., self.top : self.top + self.height, self.left : self.left + self.width, :]

    def cut_map(self, change_map: ChangeMap) -> ChangeMap:
        """The box of every frame of ``change_map`` (of the image's size)."""
        if not self.cropped:
            return change_map
        return change_map.crop(self.top, self.left, self.height, self.width)

    @staticmethod
    def _resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
        """(H', W', 3) or (T, H', W', 3) resized to (height, width), frame by frame (Lanczos)."""
        if pixels.shape[-3:-1] == (height, width):
            return pixels
        from PIL import Image

        if pixels.ndim == 4:
            return np.stack([Region._resize(frame, height, width) for frame in pixels])
        return np.asarray(Image.fromarray(pixels).resize((width, height), Image.Resampling.LANCZOS))

    def align(self, image: np.ndarray) -> np.ndarray:
        """An image of any size that goes with the input (a ControlNet's control image):
        stretched to the input's size, then cut and scaled as the input is; as it is when
        nothing is cropped."""
        if not self.cropped:
            return image
        return self.to_work(self.cut(self._resize(image, *self.size)))

    def to_work(self, box: np.ndarray) -> np.ndarray:
        """The box's pixels, uint8 (..., height, width, 3), at the model's size ``work``."""
        return self._resize(box, *self.work)

    def from_work(self, pixels: np.ndarray) -> np.ndarray:
        """The model's pixels, uint8 (..., h, w, 3) at ``work`` (or any size), at the box's size."""
        return self._resize(pixels, self.height, self.width)

    def paste(self, full: np.ndarray, box: np.ndarray) -> np.ndarray:
        """``full`` (..., H, W, 3) with ``box`` (..., height, width, 3) in the region: a new array."""
        if not self.cropped:
            return box
        out = full.copy()
        out[..., self.top : self.top + self.height, self.left : self.left + self.width, :] = box
        return out

    def describe(self) -> str:
        """One line: which region of the image the model runs on, and at what size."""
        scaled = f", scaled to {self.work[1]}x{self.work[0]}" if self.work != (self.height, self.width) else ""
        return (f"crop: the model runs on {self.width}x{self.height} at x {self.left}, y {self.top} "
                f"of {self.size[1]}x{self.size[0]}{scaled}")


def whole(height: int, width: int) -> Region:
    """The whole image as the region: nothing is cropped."""
    return Region(0, 0, height, width, (height, width), (height, width))


def change_box(change_map: Any, padding: float = PADDING) -> Optional[tuple[int, int, int, int]]:
    """(top, left, height, width) of the pixels of strength > 0 in ``change_map`` (H, W),
    widened by ``padding`` times the longer side (at least MIN_PADDING pixels) and
    clipped to the map; None when no pixel changes."""
    return _box(strength_array(change_map) > 0, padding)


def _box(changed: np.ndarray, padding: float) -> Optional[tuple[int, int, int, int]]:
    if isinstance(padding, bool) or not isinstance(padding, (int, float)) or not 0 <= padding < math.inf:
        raise ValueError(f"padding must be a number >= 0 (a fraction of the box's longer side), got {padding!r}")
    rows, columns = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
    if rows.size == 0:
        return None
    top, bottom, left, right = rows[0], rows[-1] + 1, columns[0], columns[-1] + 1
    margin = max(MIN_PADDING, round(padding * max(bottom - top, right - left)))
    height, width = changed.shape
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(height, bottom + margin), min(width, right + margin)
    return int(top), int(left), int(bottom - top), int(right - left)


def plan_crop(
    change_map: MapLike,
    crop: str = "auto",
    padding: float = PADDING,
    native: Callable[[], Optional[int]] = lambda: None,
    size: Optional[tuple[int, ...]] = None,
) -> Region:
    """Where the model runs for ``change_map`` (h, w) in [0, 1], 1 = change (a
    :class:`~kdiff_differential.maps.change_map.ChangeMap`: the union of its frames), on
    an image of ``size`` = (H, W) (default: the map's; a map of another size is stretched to it):
    the padded box of the change when ``crop`` is ``"auto"`` and the box covers at most
    AUTO_FRACTION of the image, else the whole image (module docstring).

    ``native()`` gives the model's native side in pixels (None: run the box at its own
    size); it is called only when a box is cropped, so a model's config is read only then.
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {', '.join(map(repr, CROPS))}, got {crop!r}")
    strength = change_map.union().values[0] if isinstance(change_map, ChangeMap) else strength_array(change_map, size)
    height, width = strength.shape
    box = _box(strength > 0, padding) if crop == "auto" else None
    if box is None or box[2] * box[3] > AUTO_FRACTION * height * width:
        return whole(height, width)
    top, left, box_height, box_width = box
    side = native()
    if side is None:
        work = (box_height, box_width)
    else:
        scale = side / math.sqrt(box_height * box_width)
        work = (max(1, round(box_height * scale)), max(1, round(box_width * scale)))
    return Region(top, left, box_height, box_width, (height, width), work)
