"""Metrics of one edit, in image space: how well the output follows the change map.

Images are uint8 (H, W, 3); ``strength`` is the change map at the image's size, float
(H, W) in [0, 1] (1 = change). Per-pixel differences are measured on pixel values scaled
to [0, 1]; the curves per map level (change, banding, fidelity) in 8-bit levels (0..255).
"""

from __future__ import annotations

import math
from typing import Sequence

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


def relative_banding(out: np.ndarray, reference: np.ndarray, original: np.ndarray, strength: np.ndarray) -> float:
    """Banding that the converged edit ``reference`` does not have, in 8-bit levels: the
    largest absolute difference, between consecutive levels both edits use, of the
    :func:`change_curve` of ``out`` minus that of ``reference``. :func:`banding` also counts
    jumps of the content itself (a column where the regenerated picture differs less from
    the input, at every step count); this counts only the release's own. NaN with fewer
    than two shared levels."""
    _check(reference, original, strength)
    measured, converged = _shared(change_curve(out, original, strength), change_curve(reference, original, strength))
    if len(measured) < 2:
        return math.nan
    return float(np.abs(np.diff(measured - converged)).max())


def calibration(out: np.ndarray, reference: np.ndarray, original: np.ndarray, strength: np.ndarray) -> float:
    """How far the change follows the map otherwise than ``reference`` does, in 8-bit
    levels: :func:`calibration_gap` of the two edits' :func:`change_curve`. With
    ``reference`` the same edit converged (many steps), it is the error in how much each
    strength changes: under-change and over-change alike, bands or no bands."""
    _check(reference, original, strength)
    return calibration_gap(change_curve(out, original, strength), change_curve(reference, original, strength))


def edit_strength(outs: Sequence[np.ndarray], original: np.ndarray, strength: np.ndarray) -> np.ndarray:
    """The measured edit strength per map level, (256,) in 8-bit levels: the mean over
    ``outs`` (the same edit with different seeds, each uint8 (H, W, 3)) of their
    :func:`change_curve`; NaN at levels the map does not use. The pixel counterpart of
    the Differential Diffusion paper's EM (which measures with LPIPS)."""
    if not outs:
        raise ValueError("outs must hold at least one edit, got none")
    return np.mean([change_curve(out, original, strength) for out in outs], axis=0)


def _shared(measured: np.ndarray, converged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two curves at the levels where both are defined."""
    if measured.shape != converged.shape:
        raise ValueError(f"measured {measured.shape} and converged {converged.shape} must be curves of one shape")
    used = ~(np.isnan(measured) | np.isnan(converged))
    return measured[used], converged[used]


def cam(measured: np.ndarray, converged: np.ndarray) -> float:
    """The correlation of two :func:`edit_strength` curves (Pearson, over the levels
    both use), in [-1, 1], 1 = the same shape; NaN with fewer than two levels or a flat curve."""
    m, c = _shared(measured, converged)
    if len(m) < 2 or np.ptp(m) == 0 or np.ptp(c) == 0:
        return math.nan
    return float(np.corrcoef(m, c)[0, 1])


def dam(measured: np.ndarray, converged: np.ndarray) -> float:
    """The affine-invariant distance of two :func:`edit_strength` curves, in 8-bit levels:
    min over a, b of the RMS over shared levels of ``converged - (a * measured + b)`` (a
    least-squares fit). 0 = the measured response is an affine copy of the converged
    one; bands, a shifted release or lost levels raise it. It equals
    ``std(converged) * sqrt(1 - cam**2)``. NaN with fewer than two shared levels."""
    m, c = _shared(measured, converged)
    if len(m) < 2:
        return math.nan
    design = np.stack([m, np.ones_like(m)], axis=1)
    coefficients = np.linalg.lstsq(design, c, rcond=None)[0]
    return float(np.sqrt(np.mean((c - design @ coefficients) ** 2)))


def calibration_gap(measured: np.ndarray, converged: np.ndarray) -> float:
    """The mean over shared levels of |measured - converged|, in 8-bit levels, for two
    :func:`change_curve` or :func:`edit_strength` curves; NaN when they share no level."""
    m, c = _shared(measured, converged)
    return float(np.abs(m - c).mean()) if len(m) else math.nan


FIDELITY = {"cam": cam, "dam": dam, "calibration": calibration_gap}


def fidelity(measured: np.ndarray, converged: np.ndarray) -> dict[str, float]:
    """CAM, DAM and the calibration gap of a measured edit-strength curve against the
    converged edit's, by name (see :data:`FIDELITY`)."""
    return {name: metric(measured, converged) for name, metric in FIDELITY.items()}


# What each metric is measured in and which way is better: the y-axis labels of
# samplers.compare's tradeoff.png and the titles of samplers.banding's tables.
UNITS = {
    "nfe": ("model calls", "fewer is cheaper"),
    "seconds": ("seconds", "lower is faster"),
    "preserve_max_err": ("pixel value, 0..1", "lower is better, 0 = kept exactly"),
    "regen_mean": ("pixel value, 0..1", "neither: how much s = 1 changes"),
    "monotonicity": ("rank correlation, -1..1", "higher is better"),
    "banding": ("8-bit levels", "lower is better, ~5 = no band"),
    "relative_banding": ("8-bit levels", "lower is better, 0 = the converged edit's jumps only"),
    "cam": ("correlation, -1..1", "higher is better, 1 = same shape"),
    "dam": ("8-bit levels", "lower is better, 0 = affine copy"),
    "calibration": ("8-bit levels", "lower is better, 0 = as converged"),
}


METRICS = {
    "preserve_max_err": preserve_max_err,
    "regen_mean": regen_mean,
    "monotonicity": monotonicity,
    "banding": banding,
}


def image_metrics(out: np.ndarray, original: np.ndarray, strength: np.ndarray) -> dict[str, float]:
    """All the image-space metrics of one edit, by name."""
    return {name: metric(out, original, strength) for name, metric in METRICS.items()}
