"""The sweep's image-space metrics, on outputs built to have known values."""

import math

import numpy as np
import pytest

from samplers.metrics import image_metrics, monotonicity, preserve_max_err, regen_mean, seam

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


def test_seam_sees_an_edge_at_a_level_boundary_and_not_a_uniform_shift(gradient):
    flat = np.full((H, W, 3), 100, dtype=np.uint8)
    assert seam(flat + 20, flat, gradient) == 0
    stepped = flat.copy()
    level = np.minimum((gradient * 8).astype(int), 7)
    stepped[:, level[0] >= 4] += 40  # a brightness step where level 3 meets level 4
    # One of the 7 boundaries gains 3 channels x (40/255)^2; nothing else changes.
    assert seam(stepped, flat, gradient) == pytest.approx(3 * (40 / 255) ** 2 / 7)


def test_metrics_are_nan_where_the_map_gives_them_nothing_to_measure(original):
    flat = np.full((H, W), 0.5)
    values = image_metrics(original, original, flat)
    assert all(math.isnan(value) for value in values.values())


def test_mismatched_shapes_are_named(original, gradient):
    with pytest.raises(ValueError, match="must share H and W"):
        preserve_max_err(original[:8], original, gradient)
