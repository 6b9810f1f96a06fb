"""The built-in model in pixel space: what Differential Diffusion keeps and changes."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kdiff_differential import composite
from kdiff_differential.core.samplers import OWN_STEPS, SAMPLERS
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.pixels import to_image
from kdiff_differential.models.builtin import BuiltinModel, load_example_image, working_size
from kdiff_differential.maps.presets import PRESETS, preset_map

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
    change = change_of(model, halves, sampler=sampler, steps=None if sampler in OWN_STEPS else 6)
    assert change[:, : SIDE // 2 - 2].max() <= 1  # kept, to 8-bit rounding
    assert change[:, SIDE // 2 + 2 :].mean() > 30  # regenerated


@pytest.mark.parametrize("sampler", [name for name in SAMPLERS if name not in OWN_STEPS])
def test_one_step_runs_on_every_sampler_and_is_the_denoised_start(model: BuiltinModel, sampler: str) -> None:
    """A one-step schedule goes straight to 0, where every sampler's step is x = denoised:
    each gives Euler's result (k-diffusion's DPM++ 2M/3M SDE cannot take that step
    themselves; differential_edit takes it for them). dpm_fast runs its range in one step."""
    halves = torch.zeros(SIDE, SIDE)
    halves[:, SIDE // 2 :] = 1
    edit = differential_edit(model.denoiser, model.latent, halves, sampler=sampler, steps=1, seed=3)
    euler = differential_edit(model.denoiser, model.latent, halves, sampler="euler", steps=1, seed=3)
    assert len(edit.step_sigmas) >= 1 and torch.isfinite(edit.result).all()
    torch.testing.assert_close(edit.result[..., : SIDE // 2 - 2], model.latent[..., : SIDE // 2 - 2], atol=1e-5, rtol=0)
    if sampler != "dpm_fast":
        torch.testing.assert_close(edit.result, euler.result, atol=1e-4, rtol=1e-4)


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


def test_each_preset_runs_the_way_its_name_says() -> None:
    """gradient-x: keep (0) at the left edge to change (1) at the right, the same down each
    column; gradient-y: top to bottom; radial: change at the centre, keep at the corners."""
    height, width = 30, 50
    across, down = np.linspace(0, 1, width), np.linspace(0, 1, height)
    np.testing.assert_allclose(preset_map("gradient-x", height, width).numpy(), np.tile(across, (height, 1)), atol=1e-6)
    np.testing.assert_allclose(preset_map("gradient-y", height, width).numpy(), np.tile(down[:, None], (1, width)), atol=1e-6)
    radial = preset_map("radial", 31, 51).numpy()
    assert radial[15, 25] == pytest.approx(1) and radial[0, 0] == radial[-1, -1] == 0
    assert (np.diff(radial[15, :26]) >= 0).all() and (np.diff(radial[:16, 25]) >= 0).all()  # rising toward the centre


def test_dpm_adaptive_warns_once_that_it_ignores_steps(model: BuiltinModel) -> None:
    halves = torch.zeros(SIDE, SIDE)
    halves[:, SIDE // 2 :] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = differential_edit(model.denoiser, model.latent, halves, sampler="dpm_adaptive").result
        asked = differential_edit(model.denoiser, model.latent, halves, sampler="dpm_adaptive", steps=3).result
        differential_edit(model.denoiser, model.latent, halves, sampler="euler", steps=3)
    assert [str(warning.message) for warning in caught] == ["sampler=dpm_adaptive chooses its own steps: steps=3 is ignored"]
    assert caught[0].filename == __file__  # it points at the caller's line
    assert torch.equal(asked, chosen)


@pytest.mark.parametrize(
    "settings, error, says",
    [
        ({"steps": 0}, ValueError, "steps must be a whole number >= 1, got 0"),
        ({"steps": 2.5}, ValueError, "steps must be a whole number >= 1, got 2.5"),
        ({"denoise": 0}, ValueError, "denoise must be a number in (0, 1], got 0"),
        ({"denoise": 2.0}, ValueError, "denoise must be a number in (0, 1], got 2.0"),
        ({"seed": "a"}, TypeError, "seed must be an int, got 'a'"),
        ({"extra_args": [1]}, TypeError, "extra_args must be a dict"),
        ({"sampler": "euler_b"}, ValueError, "unknown sampler 'euler_b'"),
    ],
    ids=["steps-0", "steps-float", "denoise-0", "denoise-2", "seed", "extra-args", "sampler"],
)
def test_bad_arguments_are_named(model: BuiltinModel, settings: dict, error: type, says: str) -> None:
    with pytest.raises(error) as raised:
        differential_edit(model.denoiser, model.latent, torch.ones(SIDE, SIDE), **settings)
    assert says in str(raised.value)


@pytest.mark.parametrize("sampler, steps", [("dpmpp_2m", 20), ("euler", 50)])
def test_full_regeneration_is_a_photograph_plus_the_spreads_colour_grain(model: BuiltinModel, sampler: str, steps: int) -> None:
    """What docs/models.md says of the grain: a fully changed image is the nearest training
    photograph plus independent noise in each channel of about SPREAD x 127.5 levels
    (the model's data: a Gaussian of width SPREAD around each photograph), which more
    steps do not remove, and which adds to the photograph's own fine detail."""
    from scipy import ndimage

    from kdiff_differential.models.builtin import SPREAD, TRAINING_IMAGES, fit_pixels, photograph

    edit = differential_edit(model.denoiser, model.latent, torch.ones(SIDE, SIDE), sampler=sampler, steps=steps, seed=0)
    result = model.decode(edit.result).astype(float)
    photos = [to_image(fit_pixels(photograph(name), SIDE, SIDE)).astype(float) for name in TRAINING_IMAGES]
    photo = min(photos, key=lambda pixels: np.mean((pixels - result) ** 2))
    grain = result - photo
    expected = SPREAD * 127.5  # 12.75 levels
    assert 0.8 * expected < grain.std() < 1.15 * expected, grain.std()
    assert abs(grain.mean()) < 2
    # Independent per channel (colour speckle): its spread around each pixel's grey is sqrt(2/3) of it.
    assert 0.8 * expected * np.sqrt(2 / 3) < (grain - grain.mean(axis=2, keepdims=True)).std() < 1.15 * expected * np.sqrt(2 / 3)

    def fine(pixels: np.ndarray) -> float:
        return float((pixels - ndimage.gaussian_filter(pixels, sigma=(1.5, 1.5, 0))).std())

    assert fine(result) > 1.25 * fine(photo)  # 17.2 and 16.7 against 12.2 at 64 x 64
