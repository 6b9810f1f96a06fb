"""The built-in model in pixel space: what Differential Diffusion keeps and changes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdiff_differential import composite
from kdiff_differential.edit import SAMPLERS, differential_edit
from kdiff_differential.images import to_image
from kdiff_differential.models.builtin import BuiltinModel, load_example_image, working_size
from kdiff_differential.presets import PRESETS, preset_map

SIDE = 64


@pytest.fixture(scope="module")
def model() -> BuiltinModel:
    """The built-in model fitted to the example image, subsampled to SIDE x SIDE."""
    example = load_example_image()
    step = example.shape[0] // SIDE
    return BuiltinModel(np.ascontiguousarray(example[::step, ::step]))


def change_of(model: BuiltinModel, change_map: torch.Tensor, **settings) -> np.ndarray:
    """Per-pixel change in 8-bit levels, (H, W), averaged over the channels."""
    edit = differential_edit(model.denoiser, model.latent, change_map, steps=settings.pop("steps", 12), **settings)
    original = to_image(model.latent).astype(float)
    return np.abs(model.decode(edit.result).astype(float) - original).mean(axis=2)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_map_0_is_kept_and_map_1_regenerated_with_every_sampler(model: BuiltinModel, sampler: str) -> None:
    halves = torch.zeros(SIDE, SIDE)
    halves[:, SIDE // 2 :] = 1
    change = change_of(model, halves, sampler=sampler, steps=6)
    assert change[:, : SIDE // 2 - 2].max() <= 1  # kept, to 8-bit rounding
    assert change[:, SIDE // 2 + 2 :].mean() > 30  # regenerated


def test_change_grows_with_the_map_value(model: BuiltinModel) -> None:
    # One strength over the whole image at a time, so that every level is measured on
    # the same pixels.
    levels = torch.linspace(0, 1, 6)
    change = np.array([change_of(model, torch.full((SIDE, SIDE), float(level))).mean() for level in levels])
    assert change[0] == 0
    assert np.all(np.diff(change) > 1), change
    assert change[-1] > 40


def test_a_partial_denoise_changes_less(model: BuiltinModel) -> None:
    full = preset_map("full", SIDE, SIDE)
    assert change_of(model, full, denoise=0.3).mean() < change_of(model, full).mean()


def test_large_inputs_run_at_the_working_size_and_the_composite_keeps_kept_pixels_exactly() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (600, 40, 3), dtype=np.uint8)
    big = BuiltinModel(image)
    assert working_size(600, 40) == (512, 34) == tuple(big.latent.shape[-2:])
    halves = torch.zeros(600, 40)
    halves[300:] = 1
    edit = differential_edit(big.denoiser, big.latent, halves, steps=3)
    raw = big.decode(edit.result)
    assert raw.shape == image.shape
    # The decode is the result scaled up: resampling blurs the random pixels, kept or not...
    assert np.abs(raw[:290].astype(int) - image[:290]).mean() > 10
    # ...and the composite puts the kept ones back, to the byte.
    result = composite(image, raw, halves)
    assert np.array_equal(result[:300], image[:300])
    assert np.abs(result[310:].astype(int) - image[310:]).mean() > 30


@pytest.mark.parametrize("name", PRESETS)
def test_presets_are_change_strengths(name: str) -> None:
    strengths = preset_map(name, 30, 50)
    assert strengths.shape == (30, 50) and strengths.min() >= 0 and strengths.max() <= 1
    expected_corner = {"gradient-x": 0.0, "gradient-y": 0.0, "radial": 0.0, "full": 1.0, "none": 0.0}[name]
    assert strengths[0, 0] == expected_corner
