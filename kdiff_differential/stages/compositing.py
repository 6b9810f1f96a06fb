"""The pixel-space composite: put the original back wherever the edit did not change it.

A latent model changes every pixel it decodes (a VAE's reconstruction error: colour
shifts, softened text and faces), and a model run below the input's resolution blurs
what it scales back up. The map says where change was wanted; the composite keeps the
original everywhere else, exactly, and wherever the model barely changed a pixel.

Modes (``--composite``; docs/cli.md, "The pixel-space composite", has the reasons):

``"difference"`` (default)
    The result's opacity at a pixel of strength s is

        a = 1 - smootherstep(1 / (1 + (D / T(s)) ** contrast)),   T(s) = threshold * (1 - s),

    with D the local difference between result and original: the per-pixel mean over
    channels of |result - original| (in [0, 1]), taken to its maximum over a
    (2 radius + 1)^2 window and blurred by a Gaussian of ``blur`` pixels: the original
    where the model barely changed a pixel, the result where it regenerated it, with no
    seam of its own (A1111's soft-inpainting composite, on pixels).
``"mask"``
    The map itself as the result's opacity: ``original + s * (result - original)``.
``"none"``
    The result as the model decoded it.

In every mode but ``"none"``, strength-0 pixels are the original's bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..choices import COMPOSITES
from ..maps.change_map import MapLike, frame_strengths
from ..pixels import as_frames

# 0.05 of the pixel range, about 13 8-bit levels: above a Stable Diffusion VAE's typical
# reconstruction error and a 2x upscale's blur, below what a release changes from s = 0.2
# up (docs/cli.md, "The pixel-space composite").
THRESHOLD = 0.05
CONTRAST = 2.0
RADIUS = 2
BLUR = 2.0


def smootherstep(x: torch.Tensor) -> torch.Tensor:
    """6x^5 - 15x^4 + 10x^3 on [0, 1]: 0 and 1 at the ends, flat in value, slope and curvature."""
    x = x.clamp(0, 1)
    return x * x * x * (x * (6 * x - 15) + 10)


def _gaussian_blur(values: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1, 1, H, W) blurred by a separable Gaussian of ``sigma`` pixels, edges replicated."""
    if sigma <= 0:
        return values
    radius = max(1, round(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, dtype=values.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(values, (radius, radius, 0, 0), mode="replicate")
    values = F.conv2d(padded, kernel.reshape(1, 1, 1, -1))
    padded = F.pad(values, (0, 0, radius, radius), mode="replicate")
    return F.conv2d(padded, kernel.reshape(1, 1, -1, 1))


def difference_opacity(
    original: np.ndarray,
    result: np.ndarray,
    strength: np.ndarray,
    *,
    threshold: float = THRESHOLD,
    contrast: float = CONTRAST,
    radius: int = RADIUS,
    blur: float = BLUR,
) -> np.ndarray:
    """The result's opacity of the ``"difference"`` composite, float64 (H, W) in [0, 1]
    (formula in the module docstring); exactly 0 where the strength is 0."""
    change = np.abs(result.astype(np.float64) - original.astype(np.float64)).mean(axis=-1) / 255
    widened = torch.from_numpy(change)[None, None]
    if radius > 0:
        widened = F.max_pool2d(widened, 2 * radius + 1, stride=1, padding=radius)
    local = _gaussian_blur(widened, blur)[0, 0].numpy()
    s = strength
    with np.errstate(divide="ignore", invalid="ignore"):
        bar = threshold * (1 - s)  # 0 at s = 1: the result outright
        ratio = np.where(bar > 0, local / bar, np.inf)
        keep = 1 / (1 + ratio**contrast)
    opacity = 1 - smootherstep(torch.from_numpy(np.nan_to_num(keep, nan=0.0))).numpy()
    return np.where(s > 0, opacity, 0.0)


def composite(
    original: np.ndarray,
    result: np.ndarray,
    change_map: MapLike,
    mode: str = "difference",
    *,
    threshold: float = THRESHOLD,
    contrast: float = CONTRAST,
    radius: int = RADIUS,
    blur: float = BLUR,
) -> np.ndarray:
    """The original with the edit's result laid over it, uint8, the original's shape.

    ``original`` and ``result`` are uint8 (H, W, 3) at one size, or a clip's frames
    (T, H, W, 3), composited frame by frame; ``change_map`` is the strength per pixel,
    (h, w) in [0, 1], 1 = change (a tensor, an array, one per frame (T, h, w), or a
    :class:`~kdiff_differential.maps.change_map.ChangeMap`), stretched to (H, W) when its
    size differs. ``mode`` is ``"difference"``, ``"mask"`` or ``"none"`` (module
    docstring). Pixels of strength 0 come back as the original's bytes in every mode but
    ``"none"``.
    """
    if mode not in COMPOSITES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, COMPOSITES))}, got {mode!r}")
    for name, value in (("threshold", threshold), ("contrast", contrast), ("blur", blur)):
        if not (isinstance(value, (int, float)) and value >= 0 and np.isfinite(value)) or isinstance(value, bool):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise ValueError(f"radius must be a whole number >= 0, got {radius!r}")
    originals, clip = as_frames(original, "original")
    results, _ = as_frames(result, "result")
    if originals.shape != results.shape:
        raise ValueError(f"original and result must have one shape, got {original.shape} and {result.shape}")
    strengths = frame_strengths(change_map, originals.shape[1:3], len(originals))
    if mode == "none":
        return result
    options = dict(threshold=threshold, contrast=contrast, radius=radius, blur=blur)
    out = [_laid_over(frame, out, strength, mode, options) for frame, out, strength in zip(originals, results, strengths)]
    return np.stack(out) if clip else out[0]


def _laid_over(original: np.ndarray, result: np.ndarray, strength: np.ndarray, mode: str, options: dict) -> np.ndarray:
    opacity = strength if mode == "mask" else difference_opacity(original, result, strength, **options)
    blended = original + opacity[..., None] * (result.astype(np.float64) - original)
    out = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return np.where((strength > 0)[..., None], out, original)
