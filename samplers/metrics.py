"""Metrics of one edit, in image space: how well the output follows the change map.

Images are uint8 (H, W, 3); ``strength`` is the change map at the image's size, float
(H, W) in [0, 1] (1 = change). Differences are measured on pixel values scaled to [0, 1].
"""

from __future__ import annotations

import math

import numpy as np

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


def change_curve(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """The change-against-strength curve, (256,): for each 8-bit map level round(255 * s),
    the mean |out - original| over its pixels and channels, in 8-bit levels (0..255);
    NaN at levels the map does not use."""
    _check(out, original, strength)
    levels = np.rint(np.clip(strength, 0, 1) * 255).astype(np.int64).ravel()
    change = (np.abs(out.astype(np.int64) - original.astype(np.int64))).mean(axis=-1).ravel()
    counts = np.bincount(levels, minlength=256)
    sums = np.bincount(levels, weights=change, minlength=256)
    return np.divide(sums, counts, out=np.full(256, np.nan), where=counts > 0)


def banding(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> float:
    """The largest jump in mean change between neighbouring map levels, in 8-bit levels:
    the largest absolute difference between consecutive occupied levels of
    :func:`change_curve`. On a smooth image with a linear ramp map, a smooth release gives
    a curve with small steps (a fraction of a level); a release in bands gives one jump
    per band. NaN when the map has fewer than two levels.
    """
    curve = change_curve(out, original, strength)
    means = curve[~np.isnan(curve)]
    if len(means) < 2:
        return math.nan
    return float(np.abs(np.diff(means)).max())


def calibration(out: np.ndarray, reference: np.ndarray, original: np.ndarray, strength: np.ndarray) -> float:
    """How far the change follows the map otherwise than ``reference`` does, in 8-bit
    levels: the mean over the map's levels of |change_curve(out) - change_curve(reference)|.
    With ``reference`` the same edit converged (many steps), it is the error in how much
    each strength changes: under-change and over-change alike, bands or no bands."""
    _check(reference, original, strength)
    gap = change_curve(out, original, strength) - change_curve(reference, original, strength)
    used = ~np.isnan(gap)
    return float(np.abs(gap[used]).mean()) if used.any() else math.nan


METRICS = {
    "preserve_max_err": preserve_max_err,
    "regen_mean": regen_mean,
    "monotonicity": monotonicity,
    "banding": banding,
}


def image_metrics(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> dict[str, float]:
    """All the image-space metrics of one edit, by name."""
    return {name: metric(out, original, strength) for name, metric in METRICS.items()}
