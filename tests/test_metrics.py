"""The sweep's image-space metrics, on outputs built to have known values."""

import math

import numpy as np
import pytest

from samplers.metrics import (
    banding, calibration, calibration_gap, cam, change_curve, dam, edit_strength, fidelity, image_metrics, monotonicity,
    preserve_max_err, regen_mean, relative_banding,
)

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


def test_relative_banding_counts_the_jumps_the_converged_edit_does_not_have(original, gradient):
    flat = np.full((H, W, 3), 100, dtype=np.uint8)
    content = (np.arange(W) * 2 + np.where(np.arange(W) >= 20, 25, 0))[None, :, None].astype(np.uint8)
    reference = flat + content  # the converged edit: a ramp with a content step of 25 at column 20
    assert banding(reference, flat, gradient) == pytest.approx(27.0)  # the content counts as a band
    assert relative_banding(reference, reference, flat, gradient) == 0
    assert relative_banding(reference + 6, reference, flat, gradient) == 0  # more change everywhere, no band
    banded = reference.copy()
    banded[:, W // 2 :] += 9  # a band of the edit's own, at another column
    assert relative_banding(banded, reference, flat, gradient) == pytest.approx(9.0)
    # Any edit: per column (one map level each), mean |out - original| over rows and channels,
    # minus the reference's; the largest step between neighbouring columns.
    rng = np.random.default_rng(1)
    out, other = (rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8) for _ in range(2))
    per_column = [np.abs(out[:, x].astype(float) - original[:, x]).mean() - np.abs(other[:, x].astype(float) - original[:, x]).mean()
                  for x in range(W)]
    expected = max(abs(per_column[x + 1] - per_column[x]) for x in range(W - 1))
    assert relative_banding(out, other, original, gradient) == pytest.approx(expected)
    assert math.isnan(relative_banding(out, other, original, np.zeros((H, W))))  # one map level only


@pytest.fixture
def converged():
    """A converged response per map level: S-shaped in strength, NaN at unused levels."""
    curve = np.full(256, np.nan)
    levels = np.arange(0, 256, 5)
    curve[levels] = 120 / (1 + np.exp(-(levels - 128) / 30))
    return curve


def test_a_perfect_response_has_cam_1_and_dam_0(converged):
    assert cam(converged, converged) == pytest.approx(1.0)
    assert dam(converged, converged) == pytest.approx(0.0, abs=1e-9)
    assert calibration_gap(converged, converged) == 0


def test_an_affine_copy_of_the_converged_response_has_dam_0_but_a_calibration_gap(converged):
    copy = 0.6 * converged + 7  # less change overall, and an offset: the same shape
    assert dam(copy, converged) == pytest.approx(0.0, abs=1e-9)
    assert cam(copy, converged) == pytest.approx(1.0)
    assert calibration_gap(copy, converged) > 5  # the raw gap still sees the level


def test_a_stair_has_a_positive_dam_in_levels(converged):
    used = ~np.isnan(converged)
    stair = converged.copy()
    stair[used] = np.repeat(converged[used][::10], 10)[: used.sum()]  # 6 bands, each held at its first level
    assert dam(stair, converged) > 3
    assert cam(stair, converged) < 1
    # Least squares: DAM is the converged curve's spread times sqrt(1 - CAM^2).
    assert dam(stair, converged) == pytest.approx(np.nanstd(converged) * np.sqrt(1 - cam(stair, converged) ** 2))


def test_the_edit_strength_is_the_change_curve_averaged_over_seeds(original, gradient):
    flat = np.full((H, W, 3), 50, dtype=np.uint8)
    ramp = (np.arange(W) * 2)[None, :, None].astype(np.uint8)
    measured = edit_strength([flat + ramp, flat + 3 * ramp], flat, gradient)
    np.testing.assert_allclose(measured, 2 * change_curve(flat + ramp, flat, gradient), equal_nan=True)
    assert fidelity(measured, change_curve(flat + ramp, flat, gradient)) == pytest.approx({"cam": 1.0, "dam": 0.0, "calibration": np.nanmean(change_curve(flat + ramp, flat, gradient))})
    with pytest.raises(ValueError, match="at least one edit"):
        edit_strength([], flat, gradient)


def test_fidelity_is_nan_where_the_curves_share_too_few_levels(converged):
    flat = np.where(np.isnan(converged), np.nan, 4.0)
    assert math.isnan(cam(flat, converged))  # a flat response has no correlation
    lone = np.full(256, np.nan)
    lone[0] = 1.0
    assert math.isnan(dam(lone, converged)) and math.isnan(calibration_gap(np.full(256, np.nan), converged))
    with pytest.raises(ValueError, match="one shape"):
        dam(converged[:10], converged)


def test_metrics_are_nan_where_the_map_gives_them_nothing_to_measure(original):
    flat = np.full((H, W), 0.5)  # no kept or changed pixel, one map level
    values = image_metrics(original, original, flat)
    assert all(math.isnan(value) for value in values.values())


def test_mismatched_shapes_are_named(original, gradient):
    with pytest.raises(ValueError, match="must share H and W"):
        preserve_max_err(original[:8], original, gradient)
