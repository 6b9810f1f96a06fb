"""Few-step checkpoints: the folder's own scheduler (timestep spacing, steps_offset) as
the 'model' schedule of the UNet families, checked against diffusers' own pipeline, and
the defaults a few-step folder brings; on tiny random pipelines."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import pytest
import torch

from conftest import save_tiny_sdxl

from kdiff_differential import load_pipeline
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.core.schedules import make_sigmas

HEIGHT, WIDTH = 24, 32  # pixels; the tiny VAE's factor is 2


def respace(folder: Path, **settings) -> Path:
    """``folder``'s scheduler config with ``settings`` changed, as a few-step checkpoint ships it."""
    path = folder / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | settings))
    return folder


@pytest.fixture(scope="module")
def trailing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return respace(save_tiny_sdxl(tmp_path_factory.mktemp("trailing"), "epsilon"), timestep_spacing="trailing")


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_trailing_spacing_at_few_steps_is_the_diffusers_pipeline(trailing: Path, steps: int) -> None:
    """With the map all ones, Euler on the folder's 'trailing' schedule gives the latent
    diffusers' StableDiffusionXLPipeline gives with the same scheduler (its
    EulerDiscreteScheduler as the folder configures it), noise and prompt."""
    pipe = load_pipeline(trailing)
    latent = torch.zeros(1, 4, HEIGHT // 2, WIDTH // 2)  # all released: only its shape matters
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(HEIGHT // 2, WIDTH // 2), sampler="euler", steps=steps,
        schedule="model", extra_args=pipe.extra_args("a red cat", "", 3.0, size=(HEIGHT, WIDTH)), seed=5,
    )
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(trailing, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    # 'trailing' starts from the noise times sigma_max (init_noise_sigma), as ours does.
    expected = reference(
        prompt="a red cat", latents=edit.wrapper.noise, num_inference_steps=steps, height=HEIGHT, width=WIDTH,
        guidance_scale=3.0, output_type="latent",
    ).images
    torch.testing.assert_close(edit.wrapper.sigmas, reference.scheduler.sigmas, rtol=1e-6, atol=0)
    assert (expected - edit.wrapper.noise * edit.wrapper.sigmas[0]).abs().mean() > 0.1  # the model moved the start
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.mark.parametrize(
    ("kind", "settings", "timesteps"),
    [
        ("EulerDiscreteScheduler", {"timestep_spacing": "leading", "steps_offset": 1}, [751, 501, 251, 1]),
        ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}, [999, 749, 499, 249]),
        ("DDIMScheduler", {"timestep_spacing": "linspace"}, [999, 666, 333, 0]),
    ],
)
def test_the_model_schedule_takes_the_folders_timesteps(trailing: Path, kind: str, settings: dict, timesteps: list) -> None:
    """Whole timesteps give the training levels exactly: the UNet sees the scheduler's
    timesteps (leading with its offset, trailing, DDIM's rounded linspace)."""
    from kdiff_differential.models.networks import compvis_denoiser

    config = json.loads((trailing / "scheduler" / "scheduler_config.json").read_text()) | settings | {"_class_name": kind}
    denoiser = compvis_denoiser(torch.nn.Identity(), config)  # the schedule alone: the network is never called
    sigmas = make_sigmas(denoiser, 4, "model")
    assert sigmas[-1] == 0
    assert denoiser.sigma_to_t(sigmas[:-1]).round().tolist() == timesteps
    torch.testing.assert_close(sigmas[:-1], denoiser.sigmas[timesteps], rtol=1e-6, atol=0)


def test_a_trailing_folder_defaults_to_its_schedule_four_steps_and_no_guidance(trailing: Path) -> None:
    from kdiff_differential.models.families import StableDiffusion

    few = load_pipeline(trailing)
    assert (few.schedule, few.steps, few.cfg) == ("model", 4, 1.0)
    leading = StableDiffusion("sd", {}, None, {}, torch.device("cpu"), {"timestep_spacing": "leading", "steps_offset": 1})
    assert leading.defaults() == ("karras", 20, 7.0)
