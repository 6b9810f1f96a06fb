"""--color-match: a decode's colour shift is undone in the transition band; kept pixels stay exact."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from kdiff_differential.cli import main
from kdiff_differential.stages.color_matching import match_colors, transition_band
from kdiff_differential.models.builtin import load_example_image
from kdiff_differential.maps.shaping import feather_map


@pytest.fixture(scope="module")
def original() -> np.ndarray:
    return np.asarray(Image.fromarray(load_example_image()).resize((96, 96), Image.LANCZOS))


def disk(side: int = 96, radius: int = 24) -> np.ndarray:
    rows, columns = np.mgrid[:side, :side]
    return ((rows - side // 2) ** 2 + (columns - side // 2) ** 2 <= radius**2).astype(float)


def cast(image: np.ndarray, where: np.ndarray) -> np.ndarray:
    """A decode's colour shift, on purpose: warmer and less saturated where ``where``."""
    pixels = image.astype(float)
    grey = pixels.mean(axis=-1, keepdims=True)
    shifted = 0.85 * pixels + 0.15 * grey + np.array([30.0, 10.0, -25.0])
    return np.where(where[..., None], np.clip(np.rint(shifted), 0, 255), pixels).astype(np.uint8)


@pytest.mark.parametrize("feather", [0, 12])
def test_a_colour_shift_is_brought_back_within_a_few_levels_in_the_band(original, feather):
    change = feather_map(disk(), feather) if feather else disk()
    shifted = cast(original, change > 0)
    band = transition_band(change)
    before = np.abs(shifted.astype(int) - original.astype(int))[band].mean()
    matched = match_colors(shifted, original, change)
    after = np.abs(matched.astype(int) - original.astype(int))[band].mean()
    assert before > 15 and after < 4  # a few 8-bit levels, on average over the band


def test_kept_pixels_are_not_touched(original):
    change = disk()
    shifted = cast(original, np.ones(change.shape, bool))  # shifted everywhere, kept pixels too
    matched = match_colors(shifted, original, change)
    assert np.array_equal(matched[change == 0], shifted[change == 0])


def test_pixels_the_model_barely_touched_keep_their_colour(original):
    # The model regenerated the core (s >= 0.5) with a cast and left the feather's faint
    # tail as it was: the match must not carry the core's correction out there as a halo.
    change = feather_map(disk(), 12)
    result = cast(original, change >= 0.5)
    matched = match_colors(result, original, change).astype(int)
    faint = (change > 0) & (change <= 0.01)
    assert faint.sum() > 100
    assert np.abs(matched - result)[faint].max() <= 1
    core = change >= 0.5  # still corrected
    assert np.abs(matched - original)[core].mean() < 0.7 * np.abs(result.astype(int) - original)[core].mean()


def test_colours_beyond_the_gamut_are_clipped_as_lab2rgb_would_without_a_warning():
    # Dark result pixels with a strong yellow cast, matched to an original of black and yellow,
    # land at b* > 200 (L* + 16) / 116, where CIE XYZ's Z is negative.
    from skimage.color import lab2rgb, rgb2lab

    original = np.zeros((8, 8, 3), np.uint8)
    original[::2] = (255, 255, 0)
    result = np.zeros((8, 8, 3), np.uint8)
    result[::2], result[1::2] = (200, 200, 255), (60, 60, 0)
    change = np.ones((8, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        matched = match_colors(result, original, change)
    lab, lab_original = rgb2lab(result / 255), rgb2lab(original / 255)
    transformed = (lab - lab.mean((0, 1))) * lab_original.std((0, 1)) / lab.std((0, 1)) + lab_original.mean((0, 1))
    with pytest.warns(UserWarning, match="negative Z values"):
        expected = np.clip(np.rint(lab2rgb(transformed) * 255), 0, 255)
    assert np.array_equal(matched, expected)


def test_the_band_is_the_soft_edge_or_the_inner_rim_of_a_binary_map():
    soft = feather_map(disk(), 8)
    assert np.array_equal(transition_band(soft), (soft > 0) & (soft < 1))
    rim = transition_band(disk(), band=3)
    assert rim.any() and not rim[48, 48] and rim[48, 48 - 23]  # the rim, not the centre
    assert not (rim & (disk() == 0)).any()
    assert transition_band(np.ones((5, 5))).all()


def test_bad_input_is_named(original):
    with pytest.raises(ValueError, match="one shape"):
        match_colors(original[:50], original, disk())
    with pytest.raises(ValueError, match="band must be"):
        match_colors(original, original, disk(), band=-1)


def test_end_to_end_kept_pixels_stay_the_inputs_bytes(original, tmp_path):
    Image.fromarray(original).save(tmp_path / "in.png")
    Image.fromarray((feather_map(disk(), 8) * 255).round().astype(np.uint8)).save(tmp_path / "map.png")
    assert main(["--image", str(tmp_path / "in.png"), "--map", str(tmp_path / "map.png"), "--out",
                 str(tmp_path / "out.png"), "--color-match", "--steps", "4", "--quiet"]) == 0
    result = np.asarray(Image.open(tmp_path / "out.png"))
    kept = np.asarray(Image.open(tmp_path / "map.png")) == 0
    assert np.array_equal(result[kept], original[kept])
    assert not np.array_equal(result[~kept], original[~kept])


def test_colours_on_the_z_bound_convert_without_a_warning():
    """b* clipped to 200 (L* + 16) / 116 can round a ulp past lab2rgb's Z = 0 test: across
    every L*, colours far beyond the bound come back quietly, as lab2rgb's own clip."""
    from skimage.color import lab2rgb

    from kdiff_differential.stages.color_matching import quiet_lab2rgb

    lab = np.stack([np.linspace(0, 100, 20001), np.zeros(20001), np.full(20001, 500.0)], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = quiet_lab2rgb(lab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_allclose(quiet, lab2rgb(lab[:, None, :])[:, 0, :], atol=1e-6)
