"""Stable Diffusion through diffusers, end to end, on a tiny randomly initialised pipeline.

The pipeline (UNet, VAE, CLIP text model, and a tokenizer with a vocabulary written
here) is saved with ``save_pretrained`` and loaded back through ``--model PATH``, the
code a user's model takes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import diffusers_euler, kdiff, pixels, save_tiny_sd

PREDICTIONS = ("epsilon", "v_prediction")
@pytest.fixture(scope="module", params=PREDICTIONS)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline saved to a folder, once per prediction type."""
    return save_tiny_sd(tmp_path_factory.mktemp(request.param), request.param)


def test_the_command_line_runs_a_diffusers_directory(model_dir: Path, image_file: Path, tmp_path: Path) -> None:
    args = [
        "--model", str(model_dir), "--image", str(image_file), "--map", "radial", "--prompt", "a red cat",
        "--negative", "blurry", "--cfg", "5", "--sampler", "dpmpp_2m", "--steps", "2", "--quiet",
    ]
    done = kdiff(*args, "--out", "a.png", "--save-strip", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pixels(tmp_path / "a.png").shape == (31, 37, 3)
    assert (tmp_path / "a-strip.png").is_file()


def test_kept_pixels_are_the_input_bytes_in_the_written_file(model_dir: Path, image_file: Path, tmp_path: Path) -> None:
    """The random VAE changes every pixel it decodes; the composite puts strength-0 pixels back."""
    keep_left = np.zeros((31, 37), np.uint8)
    keep_left[:, 18:] = 255
    Image.fromarray(keep_left).save(tmp_path / "map.png")
    common = ["--model", str(model_dir), "--image", str(image_file), "--map", "map.png", "--steps", "2", "--quiet"]
    for composite in ("difference", "mask", "none"):
        done = kdiff(*common, "--composite", composite, "--out", f"{composite}.png", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    original = pixels(image_file)
    for composite in ("difference", "mask"):
        assert np.array_equal(pixels(tmp_path / f"{composite}.png")[:, :18], original[:, :18])
    raw = pixels(tmp_path / "none.png").astype(int)
    assert np.abs(raw[:, :18] - original[:, :18]).mean() > 5  # what the VAE alone does to kept pixels


@pytest.fixture(scope="module")
def loaded(model_dir: Path, image_file: Path):
    """The tiny model loaded in-process, as the command line loads it, fitted to the image."""
    from kdiff_differential.images import read_image
    from kdiff_differential.models import load_model

    return load_model(str(model_dir), read_image(str(image_file)), torch.device("cpu"))


def test_wrapper_is_chosen_by_prediction_type(model_dir: Path, loaded) -> None:
    from k_diffusion import external

    prediction = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
    expected = external.CompVisVDenoiser if prediction == "v_prediction" else external.CompVisDenoiser
    assert type(loaded.denoiser.inner_model) is expected
    assert loaded.latent.shape == (1, 4, 16, 18)  # 31x37 rounded to 32x36, over the VAE's factor 2


def test_map_0_latents_are_kept_and_map_1_latents_change(loaded) -> None:
    from kdiff_differential.edit import differential_edit

    halves = torch.zeros(16, 18)
    halves[:, 9:] = 1
    edit = differential_edit(
        loaded.denoiser, loaded.latent, halves, sampler="euler_ancestral", steps=3,
        extra_args=loaded.extra_args("a cat", "", 3.0),
    )
    # Kept to float rounding: the samplers' last step computes x + (denoised - x).
    torch.testing.assert_close(edit.result[..., :8], loaded.latent[..., :8], atol=1e-5, rtol=0)
    assert (edit.result[..., 10:] - loaded.latent[..., 10:]).abs().mean() > 0.1


@pytest.mark.parametrize("model_dir", ["epsilon"], indirect=True)
def test_a_missing_weights_file_is_one_clear_line(model_dir: Path, image_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model*"):
        weights.unlink()
    done = kdiff("--model", str(broken), "--image", str(image_file), "--out", "x.png", "--quiet", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot load unet/" in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_euler_with_everything_released_is_the_diffusers_pipeline(model_dir: Path) -> None:
    """End to end against diffusers' own StableDiffusionPipeline with Euler on Karras sigmas
    (output latents, same initial noise, same steps): the text encoding, guidance, the
    epsilon or v parametrisation and our default schedule agree with diffusers', to float32
    rounding."""
    from kdiff_differential import load_pipeline
    from kdiff_differential.edit import differential_edit

    pipe = load_pipeline(model_dir)
    latent = torch.zeros(1, 4, 16, 20)  # all released: only its shape matters; diffusers wants multiples of 8 pixels
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(16, 20), sampler="euler", steps=4,
        extra_args=pipe.extra_args("a red cat", "blurry", 3.0), seed=5,
    )
    expected = diffusers_euler(
        diffusers.StableDiffusionPipeline, model_dir, edit, prompt="a red cat", negative_prompt="blurry", height=32,
        width=40, guidance_scale=3.0,
    )
    noise = edit.wrapper.noise
    # The model moved the start (noise * sigma_max) and did not land on the unit noise:
    # the comparison is not of two copies of either.
    assert (expected - noise * edit.wrapper.sigmas[0]).abs().mean() > 0.1 and (expected - noise).abs().mean() > 0.1
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()
