"""The sweep's image-space metrics, on outputs built to have known values."""

import math

import numpy as np
import pytest

from samplers.metrics import banding, calibration, change_curve, image_metrics, monotonicity, preserve_max_err, regen_mean

H, W = 16, 32


@pytest.fixture
def original():
    rng = np.random.default_rng(0)
    return rng.integers(60, 200, size=(H, W, 3), dtype=np.uint8)


@pytest.fixture
def gradient():
    return np.broadcast_to(np.linspace(0, 1, W), (H, W)).copy()


def test_preserve_and_regen_measure_the_kept_and_changed_pixels(original, gradient):
    out = original.copy()
    out[:, 0] += 10  # the strength-0 column moves by 10 levels
    out[:, -1] -= 51  # the strength-1 column by 51
    assert preserve_max_err(out, original, gradient) == pytest.approx(10 / 255)
    assert regen_mean(out, original, gradient) == pytest.approx(51 / 255)


def test_monotonicity_is_the_rank_correlation_of_change_with_strength(original, gradient):
    levels = np.arange(W, dtype=np.uint8)[None, :, None]  # one more grey level per column
    follows = original + levels
    against = original + levels[:, ::-1]
    assert monotonicity(follows, original, gradient) == pytest.approx(1.0)
    assert monotonicity(against, original, gradient) == pytest.approx(-1.0)
    assert math.isnan(monotonicity(original, original, gradient))  # no change at all


def test_banding_is_the_largest_jump_of_mean_change_between_map_levels(original, gradient):
    ramp = (np.arange(W) * 2)[None, :, None]  # change grows by 2 levels a column: no band
    smooth = (original.astype(int) + ramp).clip(0, 255).astype(np.uint8)
    flat = np.full((H, W, 3), 100, dtype=np.uint8)
    assert banding(flat + ramp.astype(np.uint8), flat, gradient) == pytest.approx(2.0)
    banded = flat.copy()
    banded[:, W // 2 :] += 30  # one hard band in the middle of the ramp
    assert banding(banded, flat, gradient) == pytest.approx(30.0)
    # A uniform change has no band at all, whatever the image holds.
    assert banding(original + 5, original, gradient) == 0
    assert banding(smooth, original, gradient) <= 2


def test_calibration_is_the_mean_gap_between_change_curves(original, gradient):
    flat = np.full((H, W, 3), 100, dtype=np.uint8)
    ramp = (np.arange(W) * 3)[None, :, None].astype(np.uint8)  # the reference changes 3 levels a column
    reference = flat + ramp
    assert calibration(reference, reference, flat, gradient) == 0
    assert calibration(reference + 4, reference, flat, gradient) == pytest.approx(4.0)  # 4 levels more everywhere
    late = flat + np.where((np.arange(W) < W // 2)[None, :, None], 0, ramp).astype(np.uint8)  # the left half left unchanged
    expected = np.mean(np.where(np.arange(W) < W // 2, np.arange(W) * 3, 0))
    assert calibration(late, reference, flat, gradient) == pytest.approx(expected)
    curve = change_curve(reference, flat, gradient)
    assert np.isnan(curve).sum() == 256 - W and np.nanmax(curve) == 3 * (W - 1)


def test_metrics_are_nan_where_the_map_gives_them_nothing_to_measure(original):
    flat = np.full((H, W), 0.5)  # no kept or changed pixel, one map level
    values = image_metrics(original, original, flat)
    assert all(math.isnan(value) for value in values.values())


def test_mismatched_shapes_are_named(original, gradient):
    with pytest.raises(ValueError, match="must share H and W"):
        preserve_max_err(original[:8], original, gradient)
