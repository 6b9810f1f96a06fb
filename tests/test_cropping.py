"""--crop: the model runs on the change's box at the model's resolution; outside the box, the input's bytes."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from kdiff_differential.cli import main
from kdiff_differential.stages.cropping import MIN_PADDING, change_box, plan_crop, whole
from kdiff_differential.models.builtin import Builtin, load_example_image


def box_map(height: int, width: int, top: int, left: int, side: int) -> np.ndarray:
    change = np.zeros((height, width))
    change[top : top + side, left : left + side] = 1
    return change


def test_the_box_is_the_change_padded_and_clipped():
    change = box_map(400, 600, 100, 200, 40)
    assert change_box(change, 0.5) == (80, 180, 80, 80)  # 0.5 x 40 = 20 px on every side
    assert change_box(change, 0.0) == (100 - MIN_PADDING, 200 - MIN_PADDING, 40 + 2 * MIN_PADDING, 40 + 2 * MIN_PADDING)
    assert change_box(box_map(400, 600, 0, 590, 10), 0.25) == (0, 590 - MIN_PADDING, 10 + MIN_PADDING, 10 + MIN_PADDING)
    assert change_box(np.zeros((5, 5))) is None


def test_auto_crops_a_small_change_only():
    assert plan_crop(box_map(400, 600, 100, 200, 40)).cropped
    assert not plan_crop(box_map(400, 600, 0, 0, 400)).cropped  # most of the image: run it whole
    assert not plan_crop(box_map(400, 600, 100, 200, 40), "off").cropped
    assert plan_crop(np.zeros((40, 60))) == whole(40, 60)


def test_the_box_is_scaled_to_the_models_native_size():
    region = plan_crop(box_map(400, 600, 100, 200, 40), padding=0.5, native=lambda: 512)
    assert (region.height, region.width) == (80, 80) and region.work == (512, 512)
    wide = plan_crop(box_map(1000, 1000, 100, 100, 1), padding=0, native=lambda: 1024)
    assert wide.work == (1024, 1024)
    # A map of another size is boxed in the image's pixels (its stretched edge is a pixel or two soft).
    half = plan_crop(box_map(200, 300, 50, 100, 20), padding=0.5, size=(400, 600))
    assert half.size == (400, 600) and 78 <= half.top <= 80 and 178 <= half.left <= 180 and 80 <= half.height <= 86


def test_cut_and_paste_touch_the_box_only():
    region = plan_crop(box_map(40, 60, 10, 20, 5), padding=0)
    full = np.zeros((40, 60, 3), np.uint8)
    box = np.full((region.height, region.width, 3), 7, np.uint8)
    pasted = region.paste(full, box)
    assert np.array_equal(region.cut(pasted), box) and pasted.sum() == box.sum() and full.sum() == 0
    with pytest.raises(ValueError, match="crop must be one of"):
        plan_crop(box_map(40, 60, 10, 20, 5), "on")


@pytest.fixture(scope="module")
def large(tmp_path_factory):
    """A 1600x1200 photo and a 200x200 change region."""
    folder = tmp_path_factory.mktemp("crop")
    photo = np.asarray(Image.fromarray(load_example_image()).resize((1600, 1200), Image.BICUBIC))
    Image.fromarray(photo).save(folder / "in.png")
    Image.fromarray((box_map(1200, 1600, 500, 700, 200) * 255).astype(np.uint8)).save(folder / "map.png")
    return folder


def run_recording(folder, name, monkeypatch, *options):
    """The result of a run and the size (h, w) of the image the model was fitted to."""
    fitted = []
    fit = Builtin.fit

    def recording(model, image):
        fitted.append(image.shape[:2])
        return fit(model, image)

    monkeypatch.setattr(Builtin, "fit", recording)
    assert main(["--image", str(folder / "in.png"), "--map", str(folder / "map.png"), "--out", str(folder / name),
                 "--steps", "4", *options]) == 0
    with Image.open(folder / name) as result:
        return np.asarray(result), fitted[0]


def detail(pixels: np.ndarray) -> float:
    """Mean |Laplacian| of the grey levels: how much fine structure there is."""
    grey = pixels.astype(float).mean(axis=-1)
    return float(np.abs(4 * grey[1:-1, 1:-1] - grey[:-2, 1:-1] - grey[2:, 1:-1] - grey[1:-1, :-2] - grey[1:-1, 2:]).mean())


@pytest.mark.slow
def test_a_small_edit_of_a_large_photo_runs_on_its_box_at_full_resolution(large, monkeypatch, capsys):
    from kdiff_differential.models.builtin import working_size

    original = np.asarray(Image.open(large / "in.png"))
    cropped, crop_fitted = run_recording(large, "crop.png", monkeypatch)
    said = capsys.readouterr().err
    match = re.search(r"crop: the model runs on (\d+)x(\d+) at x (\d+), y (\d+) of 1600x1200", said)
    assert match, said
    width, height, left, top = map(int, match.groups())
    assert (width, height, left, top) == (300, 300, 650, 450)  # 200 px + 50 px of padding each side
    outside = np.ones((1200, 1600), bool)
    outside[top : top + height, left : left + width] = False
    assert np.array_equal(cropped[outside], original[outside])

    whole_run, whole_fitted = run_recording(large, "off.png", monkeypatch, "--crop", "off", "--quiet")
    assert "crop:" not in capsys.readouterr().err
    # Faster: the model's work is its pixel count (the built-in model's cost grows with it).
    crop_pixels, whole_pixels = np.prod(working_size(*crop_fitted)), np.prod(working_size(*whole_fitted))
    assert crop_pixels / whole_pixels < 0.5
    # Sharper: one model pixel per input pixel in the region, against 512/1600 without the crop,
    # and the region's result has the fine structure to show for it.
    assert working_size(*crop_fitted)[1] / crop_fitted[1] == 1.0
    assert working_size(*whole_fitted)[1] / 1600 == pytest.approx(0.32)
    region = (slice(520, 680), slice(720, 880))
    assert detail(cropped[region]) > 3 * detail(whole_run[region])


def test_quiet_says_nothing_about_the_crop(tmp_path, capsys):
    Image.fromarray(np.full((96, 128, 3), 90, np.uint8)).save(tmp_path / "in.png")
    Image.fromarray((box_map(96, 128, 40, 60, 8) * 255).astype(np.uint8)).save(tmp_path / "map.png")
    assert main(["--image", str(tmp_path / "in.png"), "--map", str(tmp_path / "map.png"), "--out", str(tmp_path / "out.png"),
                 "--steps", "3", "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    result = np.asarray(Image.open(tmp_path / "out.png"))
    assert result.shape == (96, 128, 3) and np.array_equal(result[:20], np.full((20, 128, 3), 90, np.uint8))
