"""What the model sees under the changing region before encoding (``--fill``).

Plain Differential Diffusion struggles to put something new into a flat area: frozen
pixels and the encoded image pull the region back to the original's colours. Filling
the region first (as InvokeAI and Krita do) gives the model room to move:

``"original"`` (default)
    The input as it is.
``"noise"``
    Coloured Gaussian noise with the region's own colour statistics (its mean and its
    3 x 3 colour covariance, each pixel weighted by its strength).
``"blur"``
    A heavy Gaussian blur of the input: standard deviation 1/16 of its longest side.
``"mean"``
    The region's mean colour (weighted by strength).

The fill is blended by the map, ``image + w(s) * (fill - image)``, with the weight w(s) 0
up to s = 0.65 and a smoothstep from there to 1 at s = 1: only pixels released early
enough to be regenerated are filled, because what a later-released pixel is given
survives into the result (noise as speckle, blur as softness). Pixels of strength up to
0.65 are the input's bytes. The fill only feeds the model: the composite lays the result
over the unfilled input, so kept pixels stay exact in the output whatever the fill.
"""

from __future__ import annotations

import numpy as np

from ..choices import FILLS
from ..maps.change_map import MapLike, frame_strengths
from ..pixels import as_frames

# The blur fill's standard deviation, as a fraction of the image's longest side.
BLUR_FRACTION = 1 / 16
# The fill reaches only pixels of strength above this: below it a pixel is released late
# enough that the model refines what it is given rather than regenerating it, and any
# fill there would survive into the result (samplers/fill_residue.py).
FILL_FROM = 0.65


def fill_weight(strength: np.ndarray) -> np.ndarray:
    """How much of the fill a pixel of strength s gets: 0 up to FILL_FROM, then a
    smoothstep up to 1 at s = 1."""
    t = np.clip((strength - FILL_FROM) / (1 - FILL_FROM), 0, 1)
    return t * t * (3 - 2 * t)


def region_statistics(image: np.ndarray, strength: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The strength-weighted mean colour (3,) and colour covariance (3, 3) of ``image``,
    uint8 (H, W, 3), under ``strength`` (H, W) in [0, 1] with a positive sum; 8-bit units."""
    weights = strength.reshape(-1) / strength.sum()
    colours = image.reshape(-1, 3).astype(np.float64)
    mean = weights @ colours
    centred = colours - mean
    return mean, (centred * weights[:, None]).T @ centred


def fill_pixels(image: np.ndarray, change_map: MapLike, fill: str, seed: int = 0) -> np.ndarray:
    """``fill`` (one of FILLS) laid under the map's region: uint8, ``image``'s shape.

    ``image`` is uint8 (H, W, 3), or a clip's frames (T, H, W, 3), each filled on its own
    with the same ``seed``; ``change_map`` the strengths (h, w) in [0, 1], 1 = change (a
    tensor, an array, one per frame (T, h, w), or a
    :class:`~kdiff_differential.maps.change_map.ChangeMap`), stretched to (H, W) when its
    size differs. The result is ``image + fill_weight(s) * (fill - image)``, rounded:
    pixels of strength up to FILL_FROM are ``image``'s bytes. ``seed`` draws the noise fill.
    """
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {', '.join(map(repr, FILLS))}, got {fill!r}")
    frames, clip = as_frames(image, "image")
    strengths = frame_strengths(change_map, frames.shape[1:3], len(frames))
    filled = [_fill(frame, strength, fill, seed) for frame, strength in zip(frames, strengths)]
    return np.stack(filled) if clip else filled[0]


def _fill(image: np.ndarray, strength: np.ndarray, fill: str, seed: int) -> np.ndarray:
    height, width = image.shape[:2]
    weight = fill_weight(strength)
    if fill == "original" or not weight.any():
        return image
    if fill == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = BLUR_FRACTION * max(height, width)
        filled = gaussian_filter(image.astype(np.float64), (sigma, sigma, 0), mode="nearest")
    else:
        mean, covariance = region_statistics(image, strength)
        if fill == "mean":
            filled = np.broadcast_to(mean, image.shape)
        else:
            # A tiny ridge keeps the factorisation defined for a flat (rank-deficient) region.
            factor = np.linalg.cholesky(covariance + 1e-6 * np.eye(3))
            draws = np.random.default_rng(seed).standard_normal((height, width, 3))
            filled = mean + draws @ factor.T
    blended = image + weight[..., None] * (filled - image)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
