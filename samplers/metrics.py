"""Metrics of one edit, in image space: how well the output follows the change map.

Images are uint8 (H, W, 3); ``strength`` is the change map at the image's size, float
(H, W) in [0, 1] (1 = change). Differences are measured on pixel values scaled to [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

# The map is cut into this many strength levels to find the boundaries between them.
SEAM_LEVELS = 8


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255


def _change(out: np.ndarray, original: np.ndarray) -> np.ndarray:
    """|out - original| in [0, 1], subtracted as integers so equal steps compare equal."""
    return np.abs(out.astype(np.int64) - original.astype(np.int64)) / 255


def _check(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> None:
    if out.shape != original.shape or out.shape[:2] != strength.shape:
        raise ValueError(
            f"out {out.shape}, original {original.shape} and strength {strength.shape} must share H and W"
        )


def _over(out: np.ndarray, original: np.ndarray, strength: np.ndarray, pixels: np.ndarray, reduce) -> float:
    _check(out, original, strength)
    if not pixels.any():
        return math.nan
    return float(reduce(_change(out, original)[pixels]))


def preserve_max_err(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> float:
    """max |out - original| over the pixels with strength 0; NaN when there are none."""
    return _over(out, original, strength, strength == 0, np.max)


def regen_mean(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> float:
    """mean |out - original| over the pixels with strength 1; NaN when there are none."""
    return _over(out, original, strength, strength == 1, np.mean)


def monotonicity(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> float:
    """Spearman rank correlation between strength and per-pixel change (mean over
    channels), over the pixels with 0 < strength < 1; NaN when undefined."""
    from scipy.stats import spearmanr

    _check(out, original, strength)
    between = (strength > 0) & (strength < 1)
    change = _change(out, original).mean(axis=-1)
    if between.sum() < 2 or np.ptp(strength[between]) == 0 or np.ptp(change[between]) == 0:
        return math.nan
    return float(spearmanr(strength[between], change[between]).statistic)


def seam(out: np.ndarray, original: np.ndarray, strength: np.ndarray, levels: int = SEAM_LEVELS) -> float:
    """Excess gradient energy along the boundaries between map levels.

    Over pairs of neighbouring pixels, excess = |d out|^2 - |d original|^2 (summed over
    channels). The seam is the mean excess over pairs that straddle a boundary between
    two of ``levels`` strength levels, minus the mean excess over the other pairs: 0 when
    the boundaries gain no more edge than the rest of the image, positive for visible
    seams. NaN when the map has no boundary.
    """
    _check(out, original, strength)
    level = np.minimum((strength * levels).astype(np.int64), levels - 1)
    a, b = _unit(out), _unit(original)
    excess, boundary = [], []
    for axis in (0, 1):
        excess.append((np.diff(a, axis=axis) ** 2 - np.diff(b, axis=axis) ** 2).sum(axis=-1).ravel())
        boundary.append((np.diff(level, axis=axis) != 0).ravel())
    excess, boundary = np.concatenate(excess), np.concatenate(boundary)
    if not boundary.any() or boundary.all():
        return math.nan
    return float(excess[boundary].mean() - excess[~boundary].mean())


METRICS = {
    "preserve_max_err": preserve_max_err,
    "regen_mean": regen_mean,
    "monotonicity": monotonicity,
    "seam": seam,
}


def image_metrics(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> dict[str, float]:
    """All the image-space metrics of one edit, by name."""
    return {name: metric(out, original, strength) for name, metric in METRICS.items()}
