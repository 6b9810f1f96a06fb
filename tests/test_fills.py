"""--fill: what the model sees under the region; kept pixels exact whatever the fill."""

from __future__ import annotations

import numpy as np
import pytest

from kdiff_differential.cli import build_parser
from kdiff_differential.stages.fills import FILL_FROM, FILLS, fill_pixels, region_statistics
from samplers.fill_distance import measure
from samplers.fill_residue import measure as fill_residue


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)


def half_map(level: float) -> np.ndarray:
    change = np.zeros((64, 80))
    change[:, 40:] = level
    return change


@pytest.mark.parametrize("fill", FILLS)
def test_strength_zero_pixels_are_the_inputs_bytes(image, fill):
    filled = fill_pixels(image, half_map(1.0), fill, seed=3)
    assert filled.dtype == np.uint8 and filled.shape == image.shape
    assert np.array_equal(filled[:, :40], image[:, :40])


def test_a_full_strength_mean_fill_is_the_regions_mean_colour(image):
    filled = fill_pixels(image, half_map(1.0), "mean")
    expected = image[:, 40:].reshape(-1, 3).mean(axis=0)
    assert np.abs(filled[:, 40:].astype(float) - expected).max() <= 0.5


def test_only_pixels_released_early_are_filled(image):
    full = fill_pixels(image, half_map(1.0), "mean").astype(float)
    for level in (0.2, 0.5, FILL_FROM):  # released late: the model would keep what it is given
        assert np.array_equal(fill_pixels(image, half_map(level), "mean"), image)
    # Halfway from FILL_FROM to 1 a smoothstep is 1/2.
    halfway = fill_pixels(image, half_map((1 + FILL_FROM) / 2), "mean").astype(float)
    assert np.abs(halfway - (image + 0.5 * (full - image))).max() <= 1.0


def test_the_noise_fill_has_the_regions_colour_statistics(image):
    tinted = image.copy()
    tinted[:, 40:, 0] //= 4  # a region poor in red, to tell its statistics from the image's
    filled = fill_pixels(tinted, half_map(1.0), "noise", seed=1)
    mean, covariance = region_statistics(tinted, half_map(1.0))
    region = filled[:, 40:].reshape(-1, 3).astype(float)
    # Clipping to 0..255 trims the tails a little; the mean and spread stay close.
    assert np.abs(region.mean(axis=0) - mean).max() < 4
    assert np.abs(region.std(axis=0) - np.sqrt(np.diag(covariance))).max() < 0.1 * np.sqrt(np.diag(covariance)).max()
    assert not np.array_equal(fill_pixels(tinted, half_map(1.0), "noise", seed=2), filled)


def test_the_blur_fill_is_smoother_than_the_input(image):
    filled = fill_pixels(image, half_map(1.0), "blur").astype(float)
    assert np.abs(np.diff(filled[:, 41:], axis=1)).mean() < 0.1 * np.abs(np.diff(image[:, 41:].astype(float), axis=1)).mean()


def test_an_unknown_fill_and_a_bad_image_are_named(image):
    with pytest.raises(ValueError, match="fill must be one of"):
        fill_pixels(image, half_map(1.0), "zeros")
    with pytest.raises(TypeError, match="image must be a uint8 array"):
        fill_pixels(image.astype(float), half_map(1.0), "mean")


def test_the_command_line_offers_every_fill_crop_and_executor():
    from kdiff_differential.stages.cropping import CROPS
    from kdiff_differential.executors import EXECUTORS

    choices = {action.dest: (tuple(action.choices), action.default) for action in build_parser()._actions if action.choices}
    assert choices["fill"] == (FILLS, "original")
    assert choices["crop"] == (CROPS, "auto")
    assert choices["executor"] == (EXECUTORS, "local")


def test_a_fill_moves_a_full_strength_region_and_leaves_a_partial_one_alone():
    """docs/cli.md's measurement, smaller, on the built-in model."""
    partial, full = measure(side=96, level=0.3, steps=6), measure(side=96, level=1.0, steps=6)
    assert all(outside == 0 for table in (partial, full) for _, outside in table.values())  # kept: the input's bytes
    for fill in ("noise", "blur", "mean"):
        assert partial[fill][0] == partial["original"][0]
        assert full[fill][0] > full["original"][0]


@pytest.mark.slow
def test_no_fill_survives_into_partly_changed_pixels():
    # samplers/fill_residue.py: the high-pass of (result - plain result) by strength band;
    # blended linearly by strength, the noise fill left 7.7 and 11.6 levels in the two lower bands.
    table = fill_residue(steps=4)  # few steps: the coarsest release, where most would survive
    for fill in ("noise", "blur", "mean"):
        assert max(table[fill][:2]) < 0.5
        assert table[fill][2] < 2
