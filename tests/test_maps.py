"""Change maps: accepted shapes, types, resizing, conventions and errors."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from kdiff_differential import latent_map

SHAPE = (2, 4, 8, 8)


@pytest.mark.parametrize(
    "shape, batch",
    [((8, 8), 1), ((1, 8, 8), 1), ((2, 8, 8), 2), ((1, 1, 8, 8), 1), ((2, 1, 8, 8), 2)],
)
def test_accepted_shapes_become_b1hw(shape, batch):
    out = latent_map(torch.full(shape, 0.25), SHAPE)
    assert out.shape == (batch, 1, 8, 8)
    assert torch.all(out == 0.25)


def test_per_image_maps_stay_per_image():
    maps = torch.stack([torch.zeros(8, 8), torch.ones(8, 8)])
    out = latent_map(maps, SHAPE)
    assert torch.all(out[0] == 0) and torch.all(out[1] == 1)


def test_integer_maps_are_8_bit_grey_levels():
    out = latent_map(torch.tensor([[0, 51], [255, 128]], dtype=torch.uint8), (1, 1, 2, 2))
    assert torch.allclose(out.flatten(), torch.tensor([0, 0.2, 1, 128 / 255]))
    out = latent_map(torch.tensor([[0, 255]]), (1, 1, 1, 2))  # int64 too
    assert out.flatten().tolist() == [0.0, 1.0]


def test_bool_numpy_and_pil_maps():
    assert latent_map(torch.tensor([[True, False]]), (1, 1, 1, 2)).flatten().tolist() == [1.0, 0.0]
    assert latent_map(np.array([[0.5, 1.0]]), (1, 1, 1, 2)).flatten().tolist() == [0.5, 1.0]
    grey = Image.fromarray(np.array([[0, 255]], dtype=np.uint8))
    assert latent_map(grey, (1, 1, 1, 2)).flatten().tolist() == [0.0, 1.0]


def test_keep_map_flips_the_convention():
    keep = torch.tensor([[1.0, 0.0, 0.25]])
    assert latent_map(keep, (1, 1, 1, 3), keep_map=True).flatten().tolist() == [0.0, 1.0, 0.75]


def test_resizing_to_the_latent_stays_in_range_and_keeps_the_mean():
    big = torch.rand(64, 48, generator=torch.Generator().manual_seed(0))
    out = latent_map(big, SHAPE)
    assert out.shape == (1, 1, 8, 8)
    assert 0 <= out.min() and out.max() <= 1
    assert abs(out.mean() - big.mean()) < 0.02


def test_shrinking_averages_by_default_and_samples_under_comfyui():
    # A fine checkerboard: area-weighted shrinking averages it to grey, plain bilinear
    # sampling (ComfyUI's) does not.
    board = (torch.arange(64)[:, None] + torch.arange(64)[None, :]) % 2
    averaged = latent_map(board.float(), (1, 1, 8, 8))
    assert torch.allclose(averaged, torch.full_like(averaged, 0.5), atol=0.02)
    sampled = latent_map(board.float(), (1, 1, 8, 8), resize="bilinear")
    expected = F.interpolate(board.float()[None, None], size=(8, 8), mode="bilinear", align_corners=False)
    assert torch.equal(sampled, expected)


def test_dtype_and_device_follow_the_request():
    out = latent_map(torch.ones(4, 4), (1, 1, 4, 4), dtype=torch.float16)
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
        latent_map(change_map, SHAPE)
    assert words in str(raised.value)


def test_unknown_resize_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'antialias', 'bilinear', 'nearest'"):
        latent_map(torch.ones(8, 8), SHAPE, resize="bicubic")


def test_nearest_resize_takes_the_top_left_pixel_of_each_block():
    """As F.interpolate's default in the diffusers pipelines: halving picks pixel (2i, 2j)."""
    values = torch.rand(16, 16, generator=torch.Generator().manual_seed(0))
    halved = latent_map(values, (1, 4, 8, 8), resize="nearest")
    assert torch.equal(halved[0, 0], values[::2, ::2])


# Map files in every mode Pillow opens, written here and read back as the CLI reads them.
RAMP = np.linspace(0, 1, 64)[None].repeat(4, axis=0)  # (4, 64): 0 at the left, 1 at the right


def saved(tmp_path, image, name):
    path = tmp_path / name
    image.save(path)
    with Image.open(path) as reopened:  # the mode a user's file arrives in
        mode = reopened.mode
    return str(path), mode


def levels(bits):
    return np.round(RAMP * (2**bits - 1))


@pytest.mark.parametrize(
    "name, make, mode, expected",
    [
        ("8bit.png", lambda: Image.fromarray(levels(8).astype(np.uint8)), "L", levels(8) / 255),
        ("16bit.png", lambda: Image.fromarray(levels(16).astype(np.uint16)), "I;16", levels(16) / 65535),
        ("16bit.tif", lambda: Image.fromarray(levels(16).astype(np.uint16)), "I;16", levels(16) / 65535),
        ("16bit-big-endian.tif", lambda: Image.fromarray(levels(16).astype(">u2")), "I;16B", levels(16) / 65535),
        ("32bit.tif", lambda: Image.fromarray(levels(31).astype(np.int32)), "I", levels(31) / (2**31 - 1)),
        ("float.tif", lambda: Image.fromarray(RAMP.astype(np.float32)), "F", RAMP),
        ("1bit.png", lambda: Image.fromarray(RAMP > 0.5).convert("1"), "1", (RAMP > 0.5) * 1.0),
        ("palette.png", lambda: Image.fromarray(levels(8).astype(np.uint8)).convert("P"), "P", levels(8) / 255),
        ("grey.jpg", lambda: Image.fromarray(levels(8).astype(np.uint8)), "L", levels(8) / 255),
    ],
)
def test_map_files_are_read_by_the_range_of_their_mode(tmp_path, name, make, mode, expected):
    from kdiff_differential.files.images import read_map

    path, opened = saved(tmp_path, make(), name)
    assert opened == mode
    strength = read_map(path)
    assert strength.dtype == torch.float32 and strength.shape == (4, 64)
    # JPEG: its noise (3 levels) and, a lossy map, levels within 8 of 0 or 255 read as 0 or 1 (test_lossy_files.py).
    tolerance = 11 / 255 if name.endswith(".jpg") else 1e-6
    assert np.abs(strength.numpy() - expected).max() <= tolerance
    # A PIL image given to the library is read the same way.
    with Image.open(path) as image:
        assert torch.equal(latent_map(image, (1, 1, 4, 64))[0, 0], strength)


def test_colour_maps_are_read_as_luminance_and_alpha_as_coverage_over_black(tmp_path):
    from kdiff_differential.files.images import read_map

    grey = levels(8).astype(np.uint8)
    rgb = np.stack([grey, grey, grey], axis=-1)
    path, mode = saved(tmp_path, Image.fromarray(rgb), "rgb.png")
    assert mode == "RGB" and np.allclose(read_map(path).numpy(), grey / 255, atol=1e-6)
    # Pure red is Pillow's "L" luminance of red: 299/1000 of white.
    red = np.zeros((4, 64, 3), np.uint8)
    red[..., 0] = 255
    path, _ = saved(tmp_path, Image.fromarray(red), "red.png")
    assert np.allclose(read_map(path).numpy(), 76 / 255)
    # White everywhere, alpha ramping: the alpha is the strength; transparent = 0 = keep.
    white = np.full((4, 64), 255, np.uint8)
    path, mode = saved(tmp_path, Image.fromarray(np.stack([white, grey], axis=-1), "LA"), "la.png")
    assert mode == "LA" and np.allclose(read_map(path).numpy(), grey / 255, atol=1e-6)
    path, mode = saved(tmp_path, Image.fromarray(np.stack([white, white, white, grey], axis=-1), "RGBA"), "rgba.png")
    assert mode == "RGBA" and np.allclose(read_map(path).numpy(), grey / 255, atol=1e-6)
    # A palette with a transparent entry: that entry reads as 0 whatever its colour.
    palette = Image.fromarray(np.where(RAMP > 0.5, 255, 128).astype(np.uint8)).convert("P")
    index_of_grey = palette.getpixel((0, 0))
    palette.info["transparency"] = index_of_grey
    path, mode = saved(tmp_path, palette, "palette-alpha.png")
    assert mode == "P"
    assert np.array_equal(read_map(path).numpy(), (RAMP > 0.5) * 1.0)


@pytest.mark.parametrize(
    "name, values, words",
    [
        ("nan.tif", np.where(RAMP > 0.5, np.nan, RAMP).astype(np.float32), "NaN or inf"),
        ("inf.tif", np.where(RAMP > 0.5, np.inf, RAMP).astype(np.float32), "NaN or inf"),
        ("float-255.tif", (RAMP * 255).astype(np.float32), "0..255: its range is unclear"),
        ("float-negative.tif", (RAMP - 0.5).astype(np.float32), "-0.5..0.5: its range is unclear"),
        ("32bit-small.tif", levels(16).astype(np.int32), "32-bit integer image with values 0..65535"),
        ("32bit-negative.tif", (levels(16) - 5).astype(np.int32), "-5..65530"),
    ],
)
def test_map_files_of_unclear_range_are_refused_in_one_line(tmp_path, name, values, words):
    from kdiff_differential.errors import InputError
    from kdiff_differential.files.images import read_map

    path, _ = saved(tmp_path, Image.fromarray(values), name)
    with pytest.raises(InputError) as raised:
        read_map(path)
    message = str(raised.value)
    assert words in message and name in message and "\n" not in message
    with Image.open(path) as image, pytest.raises(ValueError, match="change_map"):
        latent_map(image, (1, 1, 4, 64))


def test_a_colour_array_is_read_as_its_luminance_as_a_map_file_is():
    from PIL import Image

    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(colour).convert("L"), dtype=np.float32) / 255
    got = latent_map(colour, (1, 4, 12, 10))
    assert torch.allclose(got[0, 0], torch.from_numpy(expected))
    # Alpha is coverage over black, as in a map file.
    rgba = np.concatenate([colour, np.zeros((12, 10, 1), np.uint8)], axis=-1)
    assert latent_map(rgba, (1, 4, 12, 10)).max() == 0


def test_a_colour_tensor_is_named_not_read_as_a_batch():
    with pytest.raises(ValueError, match=r"looks like a colour image \(H, W, 3\)"):
        latent_map(torch.rand(32, 32, 3), (1, 4, 8, 8))
