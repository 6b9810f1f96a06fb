"""Map preparation (--grow, --feather, --blur): on the map, and end to end on the built-in model."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import distance_transform_edt, grey_dilation

from kdiff_differential.cli import main
from kdiff_differential.maps.shaping import blur_map, feather_map, grow_map, shape_map


def square(size: int = 41, low: int = 15, high: int = 26) -> np.ndarray:
    change = np.zeros((size, size))
    change[low:high, low:high] = 1
    return change


def distance_to(region: np.ndarray) -> np.ndarray:
    """Each pixel's Euclidean distance to the nearest pixel of ``region``."""
    return distance_transform_edt(~region)


def disk(radius: int) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    return offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2


@pytest.mark.parametrize("pixels", [1, 3, 6])
def test_growing_by_n_changes_pixels_within_n_and_nothing_beyond(pixels):
    change = square()
    grown = grow_map(change, pixels)
    distance = distance_to(change > 0)
    assert (grown[distance <= pixels] == 1).all()
    assert (grown[distance > pixels] == 0).all()


def test_growing_a_soft_map_is_a_grey_level_dilation():
    rng = np.random.default_rng(0)
    soft = rng.random((30, 37))
    expected = grey_dilation(soft, footprint=disk(4), mode="nearest")
    assert np.allclose(grow_map(soft, 4), expected, atol=1e-6)


def test_shrinking_narrows_the_region_and_keeps_its_core():
    change = square()
    shrunk = grow_map(change, -3)
    inside_distance = distance_transform_edt(change > 0)  # to the nearest kept pixel
    assert (shrunk[inside_distance <= 3] == 0).all()
    assert (shrunk[inside_distance > 3] == 1).all()
    assert shrunk.sum() < change.sum()


def test_feathering_keeps_the_region_and_ramps_down_to_zero_outside():
    change = square() * 0.6
    change[20, 20] = 0.9  # a soft region: its own strengths stay as they are
    feathered = feather_map(change, 5)
    region = change > 0
    assert np.array_equal(feathered[region], change[region].astype(np.float32))
    distance = distance_to(region)
    ring = (distance > 0) & (distance < 5)
    assert (feathered[ring] > 0).all() and (feathered[ring] < 0.6).all()
    assert (feathered[distance >= 5] == 0).all()
    # Falling with the distance: each ring is below the one inside it.
    levels = [feathered[(distance > d - 0.5) & (distance <= d + 0.5)].max() for d in (1, 2, 3, 4)]
    assert levels == sorted(levels, reverse=True)


def test_no_step_draws_a_seam_along_the_border():
    # A band across the whole width: every column must come out the same, also at the edges.
    band = np.zeros((40, 30))
    band[18:22] = 0.8
    for prepared in (grow_map(band, 5), grow_map(band, -1), feather_map(band, 6), blur_map(band, 3)):
        assert np.array_equal(prepared, np.repeat(prepared[:, :1], 30, axis=1))


def test_shape_map_works_in_pixels_of_the_input_and_in_order():
    half_size = square(21, 8, 13)  # the same square on a map half the image's size
    prepared = shape_map(half_size, grow=2, size=(42, 42))
    assert prepared.shape == (42, 42)
    assert np.array_equal(shape_map(square(), grow=2, feather=3), feather_map(grow_map(square(), 2), 3))
    assert np.array_equal(shape_map(square()), square().astype(np.float32))


def test_shape_map_returns_a_float32_array_like_the_other_tools():
    for prepared in (shape_map(square()), shape_map(square(), grow=2, feather=3, blur=1)):
        assert type(prepared) is np.ndarray and prepared.dtype == np.float32 and prepared.shape == (41, 41)


@pytest.mark.parametrize("pixels", [1e9, -1e9])
def test_a_grow_beyond_the_diagonal_is_the_diagonal(pixels):
    # Every pixel lies within the diagonal of every other: a disk that wide covers the map.
    soft = square() * 0.7
    soft[0, 0] = 0.2
    expected = np.full((41, 41), 0.7 if pixels > 0 else 0.0, np.float32)
    assert np.array_equal(shape_map(soft, grow=pixels), expected)
    # Just under the diagonal (56.57), the disk is still drawn row by row, and covers the same.
    assert np.array_equal(grow_map(soft, np.sign(pixels) * 56.5), expected)


def test_an_absurd_blur_is_refused_by_name_before_any_work():
    with pytest.raises(ValueError, match=r"blur=1e\+09: give at most the image's diagonal \(58 pixels\)"):
        shape_map(square(), grow=1e9, blur=1e9)
    assert shape_map(square(), feather=1e9).shape == (41, 41)


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: feather_map(square(), -1), "feather=-1: out of range; give a number of pixels >= 0"),
        (lambda: blur_map(square(), -2), "blur=-2: out of range; give a number of pixels >= 0"),
        (lambda: grow_map(square(), float("nan")), "grow=nan: give a number of pixels"),
        (lambda: grow_map(square() * 2, 1), "strengths in [0, 1]"),
    ],
)
def test_bad_values_are_named(call, words):
    with pytest.raises((ValueError, TypeError), match=words.replace("[", r"\[").replace("]", r"\]")):
        call()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepare")
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (41, 41, 3), dtype=np.uint8)).save(folder / "in.png")
    Image.fromarray((square() * 255).astype(np.uint8)).save(folder / "map.png")
    return folder


def run_change(folder, *options) -> np.ndarray:
    out = folder / f"out{'_'.join(options)}.png"
    assert main(["--image", str(folder / "in.png"), "--map", str(folder / "map.png"), "--out", str(out),
                 "--steps", "4", "--quiet", *options]) == 0
    with Image.open(out) as result, Image.open(folder / "in.png") as original:
        return np.abs(np.asarray(result, int) - np.asarray(original, int)).max(axis=-1)


def test_end_to_end_grow_and_shrink_move_the_edge_of_what_changes(folder):
    distance_out = distance_to(square() > 0)
    distance_in = distance_transform_edt(square() > 0)
    grown = run_change(folder, "--grow", "4")
    assert (grown[distance_out > 4] == 0).all()  # beyond the grown region: the input's bytes
    assert grown[(distance_out > 0) & (distance_out <= 4)].mean() > 20
    shrunk = run_change(folder, "--grow", "-3")
    assert (shrunk[distance_in <= 3] == 0).all()
    assert shrunk[distance_in > 3].mean() > 20


def test_end_to_end_feather_changes_a_ring_that_fades_out(folder):
    distance_out = distance_to(square() > 0)
    feathered = run_change(folder, "--feather", "6")
    assert (feathered[distance_out >= 6] == 0).all()
    near, far = feathered[(distance_out > 0) & (distance_out <= 2)], feathered[(distance_out > 3) & (distance_out < 6)]
    assert near.mean() > far.mean() > 0


def test_a_negative_feather_is_refused_in_one_line(folder, capsys):
    assert main(["--image", str(folder / "in.png"), "--out", str(folder / "never.png"), "--feather", "-2"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--feather" in error and ">= 0" in error
    assert not (folder / "never.png").exists()
