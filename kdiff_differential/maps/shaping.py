"""Map preparation: grow, feather and blur a change map before the edit (``--grow``,
``--feather``, ``--blur``).

Convention: 1 = change, 0 = keep. Every step works in pixels of the input image, on soft
maps as well as binary ones, and treats the image border as if the map went on beyond
it with its edge values, so that no step draws a seam along the border.

In the order :func:`shape_map` applies them:

``grow`` (pixels; negative shrinks)
    Grey-level dilation by a disk of that radius: each pixel takes the largest strength
    within ``grow`` pixels (Euclidean). Growing by N changes pixels within N of the
    region and none beyond; a negative value erodes (the smallest strength instead).
``feather`` (pixels, >= 0)
    Outward only: a pixel of strength 0 within ``feather`` pixels of the region gets the
    strength of the nearest region pixel, times a falloff (smoothstep) from 1 at the
    region to 0 at ``feather`` pixels. Pixels of the region keep their strengths.
``blur`` (pixels, >= 0)
    A plain Gaussian blur of that standard deviation, inside and out.

Every pixel lies within the image's diagonal of every other, so a grow (or shrink) beyond
the diagonal gives the map's largest (or smallest) strength everywhere, as the diagonal
does. A blur wider than the diagonal is refused: its kernel would outgrow memory long
before it changed the result meaningfully.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from ..errors import InputError, check_number
from .reading import strength_array


def _disk_extreme(values: np.ndarray, radius: float, largest: bool) -> np.ndarray:
    """The largest (or smallest) value within ``radius`` pixels of each pixel, the border
    extended with its edge values. A disk is the union of its rows: one running extreme
    along x per row half-width, then the extreme of those over the rows, O(pixels x radius)."""
    from scipy.ndimage import maximum_filter1d, minimum_filter1d

    if radius >= math.hypot(values.shape[0] - 1, values.shape[1] - 1):
        return np.full_like(values, values.max() if largest else values.min())
    reach = int(math.floor(radius))
    if reach < 1:
        return values
    running = maximum_filter1d if largest else minimum_filter1d
    pick = np.maximum if largest else np.minimum
    padded_rows: dict[int, np.ndarray] = {}
    out = np.full_like(values, -np.inf if largest else np.inf)
    for dy in range(-reach, reach + 1):
        half = int(math.floor(math.sqrt(radius * radius - dy * dy)))
        if half not in padded_rows:
            along_x = running(values, 2 * half + 1, axis=1, mode="nearest")
            padded_rows[half] = np.pad(along_x, ((reach, reach), (0, 0)), mode="edge")
        shifted = padded_rows[half][reach + dy : reach + dy + values.shape[0]]
        pick(out, shifted, out=out)
    return out


def _feather(values: np.ndarray, pixels: float) -> np.ndarray:
    from scipy.ndimage import distance_transform_edt

    outside = values == 0
    if pixels == 0 or outside.all() or not outside.any():
        return values
    distance, (rows, columns) = distance_transform_edt(outside, return_indices=True)
    t = np.clip(distance / pixels, 0, 1)
    ramp = values[rows, columns] * (1 - t * t * (3 - 2 * t))
    return np.where(outside, ramp, values)


def _blur(values: np.ndarray, pixels: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return np.clip(gaussian_filter(values, pixels, mode="nearest"), 0, 1)


def grow_map(change_map: Any, pixels: float) -> np.ndarray:
    """``change_map`` (H, W) in [0, 1] dilated by a disk of ``pixels`` (grey-level: each
    pixel takes the largest strength within that distance); a negative ``pixels``
    erodes it (the smallest). Returns float32 (H, W)."""
    return shape_map(change_map, grow=pixels)


def feather_map(change_map: Any, pixels: float) -> np.ndarray:
    """``change_map`` (H, W) in [0, 1] feathered outward by ``pixels``: a strength-0
    pixel at distance d < ``pixels`` from the nearest pixel of strength > 0 gets that
    pixel's strength times 1 - smoothstep(d / ``pixels``); every pixel of strength > 0
    keeps its own. Returns float32 (H, W)."""
    return shape_map(change_map, feather=pixels)


def blur_map(change_map: Any, pixels: float) -> np.ndarray:
    """``change_map`` (H, W) in [0, 1] blurred by a Gaussian of standard deviation
    ``pixels`` (at most the map's diagonal), the border extended with its edge values.
    Returns float32 (H, W)."""
    return shape_map(change_map, blur=pixels)


def shape_map(
    change_map: Any,
    *,
    grow: float = 0,
    feather: float = 0,
    blur: float = 0,
    size: Optional[tuple[int, int]] = None,
) -> np.ndarray:
    """``change_map`` (H', W') in [0, 1] (1 = change; a tensor or an array) grown, then
    feathered, then blurred (module docstring), float32 (H, W) in [0, 1].

    Distances are pixels of the input image: with ``size`` = (H, W), the input's, a map
    of another size is first stretched to it (bilinear), as the edit would stretch it.
    With every step at 0 the map comes back unchanged.
    """
    check_number("grow", grow, unit=" of pixels")
    check_number("feather", feather, 0, unit=" of pixels")
    check_number("blur", blur, 0, unit=" of pixels")
    # Checked once here, before any step runs; each step then works on the array.
    strength = strength_array(change_map, size if (grow or feather or blur) else None)
    diagonal = math.hypot(*strength.shape)
    if blur > diagonal:
        raise InputError(f"blur={blur:g}: give at most the image's diagonal ({diagonal:.0f} pixels)")
    if grow:
        strength = _disk_extreme(strength, abs(grow), largest=grow > 0)
    if feather:
        strength = _feather(strength, feather)
    if blur:
        strength = _blur(strength, blur)
    return strength.astype(np.float32)
