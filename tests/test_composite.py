"""The pixel-space composite: kept pixels exact, barely changed pixels restored, no seam,
no ghost; and the built-in model on large inputs through the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from kdiff_differential import composite
from kdiff_differential.cli import main
from kdiff_differential.stages.compositing import THRESHOLD, smootherstep

H, W = 24, 96


@pytest.fixture
def original():
    ys, xs = np.mgrid[0:H, 0:W]
    return np.stack([xs * 2, ys * 8, 255 - xs * 2], axis=2).astype(np.uint8)


def ramp(width=W, start=0.0, stop=1.0):
    return np.tile(np.linspace(start, stop, width), (H, 1))


def test_strength_zero_pixels_are_the_original_bytes_in_every_mode_but_none(original):
    result = (255 - original).astype(np.uint8)
    strength = ramp()
    strength[:, : W // 3] = 0
    for mode in ("difference", "mask"):
        out = composite(original, result, strength, mode)
        assert np.array_equal(out[:, : W // 3], original[:, : W // 3])
    assert np.array_equal(composite(original, result, strength, "none"), result)


def test_difference_keeps_the_barely_changed_and_shows_the_regenerated(original):
    strength = np.full((H, W), 0.5)
    nudged = (original.astype(int) + 3).clip(0, 255).astype(np.uint8)  # a VAE-sized error
    assert np.array_equal(composite(original, nudged, strength), original)
    repainted = np.full_like(original, 128)
    repainted[:, : W // 2] = original[:, : W // 2]
    out = composite(original, repainted, strength)
    # Far from where the two agree, the repaint shows; the local maximum widens it by RADIUS.
    assert np.array_equal(out[:, W // 2 + 4 :], repainted[:, W // 2 + 4 :])


def test_the_formula_at_one_pixel(original):
    """a = 1 - smootherstep(1 / (1 + (D / T(s))^2)), T(s) = THRESHOLD (1 - s), on a flat difference."""
    import torch

    flat = np.full_like(original, 100)
    result = np.full_like(flat, 120)
    s = 0.25
    d = 20 / 255
    keep = 1 / (1 + (d / (THRESHOLD * (1 - s))) ** 2)
    a = 1 - smootherstep(torch.tensor(keep)).item()
    out = composite(flat, result, np.full((H, W), s))
    assert out[H // 2, W // 2, 0] == round(100 + a * 20)


def test_mask_mode_uses_the_map_as_opacity(original):
    result = np.zeros_like(original)
    strength = ramp()
    out = composite(original, result, strength, "mask")
    expected = np.rint(original * (1 - strength[..., None])).astype(np.uint8)
    assert np.abs(out.astype(int) - expected).max() <= 1


def test_no_seam_where_the_map_leaves_zero(original):
    """A regenerated image over a map that is 0 on the left third and rises to 1: the
    composite's mean change per column rises without a step at the edge of the kept part
    (seam = the largest jump between neighbouring columns, in 8-bit levels)."""
    strength = np.clip((ramp() - 1 / 3) * 1.5, 0, 1)
    # What a differential edit gives: change growing with the map, plus a decoder's error everywhere.
    rng = np.random.default_rng(0)
    error = rng.integers(-4, 5, original.shape)
    result = (original * (1 - strength[..., None]) + 60 * strength[..., None] + error).clip(0, 255).astype(np.uint8)
    out = composite(original, result, strength)
    change = np.abs(out.astype(int) - original.astype(int)).mean(axis=(0, 2))
    seam = np.abs(np.diff(change)).max()
    assert seam < 3
    raw_seam = np.abs(np.diff(np.abs(result.astype(int) - original.astype(int)).mean(axis=(0, 2)))).max()
    assert seam <= raw_seam


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(mode="blend"), ValueError, "mode must be one of 'difference', 'mask', 'none'"),
        (dict(threshold=-1), ValueError, "threshold must be a finite number >= 0"),
        (dict(radius=1.5), ValueError, "radius must be a whole number"),
        (dict(change_map=np.ones((3, 3, 3))), ValueError, "change_map must be a 2-D map"),
        (dict(change_map=np.full((H, W), 2.0)), ValueError, "[0, 1]"),
        (dict(result=np.zeros((H, W, 3))), TypeError, "result must be a uint8 array"),
    ],
)
def test_bad_arguments_are_named(original, kwargs, error, words):
    args = dict(original=original, result=original.copy(), change_map=np.zeros((H, W)))
    args.update(kwargs)
    with pytest.raises(error) as raised:
        composite(**args)
    assert words in str(raised.value)


# --- the built-in model through the command line ---------------------------------------


def scene(size: int) -> Image.Image:
    """A smooth picture with hard edges drawn on it: a frame and a bar of text."""
    ys, xs = np.mgrid[0:size, 0:size] / size
    sky = np.stack([60 + 120 * ys, 110 + 100 * ys, 220 - 20 * ys], axis=2).astype(np.uint8)
    image = Image.fromarray(sky)
    draw = ImageDraw.Draw(image)
    k = size / 1000
    draw.rectangle([200 * k, 200 * k, 800 * k, 700 * k], outline=(255, 0, 0), width=max(1, round(8 * k)))
    for i in range(5):  # letter-like strokes
        x = (280 + 100 * i) * k
        draw.rectangle([x, 380 * k, x + 30 * k, 560 * k], fill=(0, 0, 0))
    return image


def edge_correlation(out: np.ndarray, original: np.ndarray) -> float:
    """Pearson correlation of the two images' gradient magnitudes (grey levels): how much
    of the input's edges the output still draws."""
    def edges(image):
        grey = image.astype(np.float64).mean(axis=-1)
        return np.hypot(np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1])

    return float(np.corrcoef(edges(out).ravel(), edges(original).ravel())[0, 1])


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


@pytest.mark.parametrize("size", [300, 1000])
def test_kept_pixels_are_byte_exact_in_the_written_png(tmp_path, monkeypatch, size):
    monkeypatch.chdir(tmp_path)
    scene(size).save("in.png")
    keep = np.full((size, size), 255, np.uint8)
    keep[:, : size // 2] = 0  # a hard edge: the left half kept
    Image.fromarray(keep).save("map.png")
    assert main(["--image", "in.png", "--map", "map.png", "--steps", "3", "--quiet", "--out", "out.png"]) == 0
    out, original = pixels(tmp_path / "out.png"), pixels(tmp_path / "in.png")
    assert np.array_equal(out[:, : size // 2], original[:, : size // 2])  # no bleed at the edge either
    assert np.abs(out[:, size // 2 + 8 :].astype(int) - original[:, size // 2 + 8 :]).mean() > 20


def test_no_ghost_of_the_input_on_a_large_input(tmp_path, monkeypatch):
    """--map full regenerates everything: a 1000 px input (run at 512 px and scaled up)
    draws no more of the input's edges than the same picture given at 512 px."""
    monkeypatch.chdir(tmp_path)
    correlation = {}
    for size in (512, 1000):
        scene(size).save(f"in-{size}.png")
        args = ["--image", f"in-{size}.png", "--map", "full", "--steps", "3", "--quiet", "--out", f"out-{size}.png"]
        assert main(args) == 0
        correlation[size] = edge_correlation(pixels(tmp_path / f"out-{size}.png"), pixels(tmp_path / f"in-{size}.png"))
    assert correlation[1000] <= correlation[512] + 0.05
