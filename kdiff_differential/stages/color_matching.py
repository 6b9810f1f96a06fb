"""Colour match (``--color-match``): bring the decoded result's colours back to the
original's where the two should agree, before the composite.

A latent model's decode often shifts the colours of the region it changed (a cast, lost
saturation: A1111#14024, diffusers#5808, krita-ai-diffusion#1789), which shows as a seam
where the region meets kept pixels. The match measures the mean and standard deviation of
each CIELAB channel of the result and of the original in the *transition band*, and maps
the result's channels so that its statistics there become the original's:

    lab' = (lab - mean_result) * std_original / std_result + mean_original

on every pixel of strength > 0 (one transform for the whole region, so that it stays
consistent inside), in part: a pixel of strength s moves by the share max(s, min(1, m / c))
of its correction, c the correction's size and m how far the model moved the pixel from
the original (Euclidean distances in L*a*b*). A pixel the model barely changed, in the
faint tail of a feathered map, so keeps its colour instead of taking the region's
correction as a halo. The band is where the map is between 0 and 1 (a feathered or blurred
edge); for a binary map, the changed pixels within ``band`` pixels of a kept one; for a
map that changes everything, the whole image. Pixels of strength 0 are not touched, and
the composite that follows puts the original's bytes there.
"""

from __future__ import annotations

import numpy as np

from ..maps.change_map import MapLike, frame_strengths
from ..pixels import as_frames

BAND = 16  # pixels: the width of the band inside a binary map's edge
# Below this standard deviation (in L*a*b* units) a channel is flat in the band, and its
# spread is left as it is instead of being divided by nearly nothing.
FLAT = 0.5


def transition_band(strength: np.ndarray, band: float = BAND) -> np.ndarray:
    """The pixels whose colours the match compares, bool (H, W), for strengths (H, W) in
    [0, 1]: 0 < s < 1; if there are none, s > 0 within ``band`` pixels of a pixel of
    strength 0; if there are none of those either, every pixel."""
    from scipy.ndimage import distance_transform_edt

    between = (strength > 0) & (strength < 1)
    if between.any():
        return between
    changed = strength > 0
    if changed.all() or not changed.any():
        return np.ones_like(changed)
    return changed & (distance_transform_edt(changed) <= band)


def quiet_lab2rgb(lab: np.ndarray) -> np.ndarray:
    """scikit-image's ``lab2rgb`` of colours (N, 3), without its warning: where b* >
    200 (L* + 16) / 116 a colour's Z would be negative, which lab2rgb clips to 0 with a
    warning; b* is clipped here to the same colour, quietly."""
    from skimage.color import lab2rgb

    lab = lab.copy()
    y = (lab[:, 0] + 16.0) / 116.0
    b = np.minimum(lab[:, 2], 200 * y)
    for _ in range(4):  # 200 * y / 200 can round a ulp above y: step b down until lab2rgb's own test passes
        b = np.where(y - b / 200.0 < 0, np.nextafter(b, -np.inf), b)
    lab[:, 2] = b
    return lab2rgb(lab[:, None, :])[:, 0, :]


def match_colors(result: np.ndarray, original: np.ndarray, change_map: MapLike, *, band: float = BAND) -> np.ndarray:
    """``result`` with its colours matched to ``original``'s in the transition band (module
    docstring), uint8, ``result``'s shape.

    ``result`` and ``original`` are uint8 (H, W, 3) at one size; ``change_map`` is the
    strength (h, w) in [0, 1], 1 = change (a tensor, an array or a
    :class:`~kdiff_differential.maps.change_map.ChangeMap`), stretched to (H, W) when its
    size differs. Pixels of strength 0 come back as ``result``'s bytes. A clip's frames
    (T, H, W, 3), with a map per frame (T, h, w) or one for all, take one correction
    measured over every frame's band, so that it cannot flicker.
    """
    from skimage.color import rgb2lab

    frames, clip = as_frames(result, "result")
    originals, _ = as_frames(original, "original")
    if frames.shape != originals.shape:
        raise ValueError(f"result and original must have one shape, got {result.shape} and {original.shape}")
    if isinstance(band, bool) or not isinstance(band, (int, float)) or not band >= 0:
        raise ValueError(f"band must be a number of pixels >= 0, got {band!r}")
    strength = frame_strengths(change_map, frames.shape[1:3], len(frames))
    changed = strength > 0
    if not changed.any():
        return result
    where = np.stack([transition_band(frame_strength, band) for frame_strength in strength])
    lab_result, lab_original = rgb2lab(frames / 255.0), rgb2lab(originals / 255.0)
    mean_result, mean_original = lab_result[where].mean(axis=0), lab_original[where].mean(axis=0)
    std_result, std_original = lab_result[where].std(axis=0), lab_original[where].std(axis=0)
    scale = np.where(std_result > FLAT, std_original / np.maximum(std_result, FLAT), 1.0)
    before = lab_result[changed]
    correction = (before - mean_result) * scale + mean_original - before
    # A pixel takes its strength's share of the correction, and more only as far as the
    # model moved it from the original: one the model barely touched (a feather's faint
    # tail) keeps its colour, where the region's one transform would draw a halo.
    moved = np.linalg.norm(before - lab_original[changed], axis=-1)
    reach = np.minimum(1, moved / np.maximum(np.linalg.norm(correction, axis=-1), 1e-12))
    matched = before + correction * np.maximum(strength[changed], reach)[:, None]
    rgb = quiet_lab2rgb(matched)
    out = frames.copy()
    out[changed] = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    return out if clip else out[0]
