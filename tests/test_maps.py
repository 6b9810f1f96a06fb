"""Change maps: accepted shapes, types, resizing, conventions and errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdiff_differential import prepare_change_map

SHAPE = (2, 4, 8, 8)


@pytest.mark.parametrize(
    "shape, batch",
    [((8, 8), 1), ((1, 8, 8), 1), ((2, 8, 8), 2), ((1, 1, 8, 8), 1), ((2, 1, 8, 8), 2)],
)
def test_accepted_shapes_become_b1hw(shape, batch):
    out = prepare_change_map(torch.full(shape, 0.25), SHAPE)
    assert out.shape == (batch, 1, 8, 8)
    assert torch.all(out == 0.25)


def test_per_image_maps_stay_per_image():
    maps = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])
    out = prepare_change_map(maps, SHAPE)
    assert torch.all(out[0] == 0) and torch.all(out[1] == 1)


def test_integer_maps_are_8_bit_grey_levels():
    out = prepare_change_map(torch.tensor([[0, 51], [255, 128]], dtype=torch.uint8), (1, 1, 2, 2))
    assert torch.allclose(out.flatten(), torch.tensor([0, 0.2, 1, 128 / 255]))
    out = prepare_change_map(torch.tensor([[0, 255]]), (1, 1, 1, 2))  # int64 too
    assert out.flatten().tolist() == [0.0, 1.0]


def test_bool_numpy_and_pil_maps():
    assert prepare_change_map(torch.tensor([[True, False]]), (1, 1, 1, 2)).flatten().tolist() == [1.0, 0.0]
    assert prepare_change_map(np.array([[0.5, 1.0]]), (1, 1, 1, 2)).flatten().tolist() == [0.5, 1.0]
    grey = Image.fromarray(np.array([[0, 255]], dtype=np.uint8))
    assert prepare_change_map(grey, (1, 1, 1, 2)).flatten().tolist() == [0.0, 1.0]


def test_keep_map_flips_the_convention():
    keep = torch.tensor([[1.0, 0.0, 0.25]])
    assert prepare_change_map(keep, (1, 1, 1, 3), keep_map=True).flatten().tolist() == [0.0, 1.0, 0.75]


def test_resizing_to_the_latent_stays_in_range_and_keeps_the_mean():
    big = torch.rand(64, 48, generator=torch.Generator().manual_seed(0))
    out = prepare_change_map(big, SHAPE)
    assert out.shape == (1, 1, 8, 8)
    assert 0 <= out.min() and out.max() <= 1
    assert abs(out.mean() - big.mean()) < 0.02


def test_shrinking_averages_by_default_and_samples_under_comfyui():
    # A fine checkerboard: area-weighted shrinking averages it to grey, plain bilinear
    # sampling (ComfyUI's) does not.
    board = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2
    averaged = prepare_change_map(board.float(), (1, 1, 8, 8))
    assert torch.allclose(averaged, torch.full_like(averaged, 0.5), atol=0.02)
    sampled = prepare_change_map(board.float(), (1, 1, 8, 8), resize="bilinear")
    expected = F.interpolate(board.float()[None, None], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(sampled, expected)


def test_dtype_and_device_follow_the_request():
    out = prepare_change_map(torch.ones(4, 4), (1, 1, 4, 4), dtype=torch.float16)
    assert out.dtype == torch.float16


@pytest.mark.parametrize(
    "change_map, error, words",
    [
        (torch.tensor([[1.5]]), ValueError, "[0, 1]"),
        (torch.tensor([[-0.1]]), ValueError, "[0, 1]"),
        (torch.tensor([[float("nan")]]), ValueError, "finite"),
        (torch.tensor([[float("inf")]]), ValueError, "finite"),
        (torch.tensor([[300]]), ValueError, "0..255"),
        (torch.ones(3, 8, 8), ValueError, "batch 3"),
        (torch.ones(1, 2, 8, 8), ValueError, "(B, 1, H, W)"),
        (torch.ones(8), ValueError, "(H, W)"),
        (torch.ones(0, 8), ValueError, "empty"),
        ("not a map", TypeError, "change_map"),
    ],
)
def test_bad_maps_are_named(change_map, error, words):
    with pytest.raises(error, match="change_map") as raised:
        prepare_change_map(change_map, SHAPE)
    assert words in str(raised.value)


def test_unknown_resize_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'antialias', 'bilinear'"):
        prepare_change_map(torch.ones(8, 8), SHAPE, resize="nearest")
