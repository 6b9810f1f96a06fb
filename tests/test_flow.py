"""Flow-matching models through the reparametrised denoiser (models/flow.py).

The velocity model is a tiny randomly initialised SD3 transformer; the reference is
diffusers' own FlowMatchEulerDiscreteScheduler run on it.
"""

from __future__ import annotations

import math

import diffusers
import k_diffusion as K
import pytest
import torch

from kdiff_differential import DifferentialDenoiser
from kdiff_differential.core.samplers import OWN_STEPS, SAMPLERS
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.models.flow import FlowDenoiser, flux_mu

SD3_SCHEDULER = {"shift": 3.0}
FLUX_SCHEDULER = {"use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
SEQ_LEN = 64  # a 16x16 latent packed 2x2


@pytest.fixture(scope="module")
def velocity():
    """A tiny random SD3 transformer as a velocity model (x_t, t) -> v, its text inputs fixed."""
    torch.manual_seed(0)
    transformer = diffusers.SD3Transformer2DModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16, pooled_projection_dim=8,
        pos_embed_max_size=16,
    ).eval()
    # The output projection is zero-initialised; random weights make v depend on the input.
    with torch.no_grad():
        for parameter in transformer.parameters():
            if not parameter.abs().sum():
                parameter.normal_(0, 0.05)
    text = torch.randn(1, 5, 16, generator=torch.Generator().manual_seed(1))
    pooled = torch.randn(1, 8, generator=torch.Generator().manual_seed(2))

    def v(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x_t.shape[0]
        with torch.no_grad():
            return transformer(
                hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=text.expand(n, -1, -1),
                pooled_projections=pooled.expand(n, -1),
            ).sample

    return v


def latent_and_noise(seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 4, 16, 16, generator=generator), torch.randn(1, 4, 16, 16, generator=generator)


def diffusers_euler(v, config: dict, steps: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' flow Euler from pure noise, with the schedule its SD3/Flux pipelines build."""
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(**config)
    if config.get("use_dynamic_shifting"):
        scheduler.set_timesteps(sigmas=list(torch.linspace(1, 1 / steps, steps).numpy()), mu=flux_mu(SEQ_LEN, config))
    else:
        scheduler.set_timesteps(steps)
    x = noise.clone()
    for timestep in scheduler.timesteps:
        x = scheduler.step(v(x, timestep.reshape(1) / 1000), timestep, x).prev_sample
    return x, scheduler.sigmas


@pytest.mark.parametrize("config", [SD3_SCHEDULER, FLUX_SCHEDULER], ids=["sd3-shift", "flux-mu"])
def test_euler_with_everything_released_is_diffusers_flow_euler(velocity, config: dict) -> None:
    latent, noise = latent_and_noise()
    expected, flow_sigmas = diffusers_euler(velocity, config, 6, noise)
    denoiser = FlowDenoiser.from_scheduler_config(velocity, config, image_seq_len=SEQ_LEN)
    sigmas = denoiser.get_sigmas(6)
    torch.testing.assert_close(denoiser.sigma_to_t(sigmas).float(), flow_sigmas, atol=1e-6, rtol=0)

    dd = DifferentialDenoiser(denoiser, latent, torch.ones(16, 16), sigmas=sigmas.float(), noise=noise)
    x = dd.start_from_noise(float(dd.sigmas[1]))
    x = K.sampling.sample_euler(dd, x, dd.sigmas[1:], disable=True)
    assert (expected - latent).abs().mean() > 0.5  # the run went somewhere: nothing of the latent is kept
    torch.testing.assert_close(x, expected, atol=1e-4, rtol=0)


def test_a_second_order_sampler_converges_faster_than_euler(velocity) -> None:
    latent, noise = latent_and_noise()
    denoiser = FlowDenoiser(velocity, shift=3.0)

    def run(sampler: str, steps: int) -> torch.Tensor:
        dd = DifferentialDenoiser(denoiser, latent, torch.ones(16, 16), sigmas=denoiser.get_sigmas(steps).float(), noise=noise)
        x = dd.start_from_noise(float(dd.sigmas[1]))
        return getattr(K.sampling, f"sample_{sampler}")(dd, x, dd.sigmas[1:], disable=True)

    reference = run("heun", 100)
    errors = {(sampler, steps): (run(sampler, steps) - reference).abs().max().item() for sampler in ("heun", "euler") for steps in (8, 16)}
    # Measured: Heun 0.052 -> 0.020, Euler 0.091 -> 0.057 from 8 to 16 steps. Heun's first
    # step, from t = 1, is Euler's (start_from_noise), and 8-16 steps is not yet asymptotic.
    assert errors["heun", 16] < errors["euler", 16] / 2, errors
    assert errors["heun", 8] / errors["heun", 16] > 1.3 * errors["euler", 8] / errors["euler", 16], errors


def test_frozen_pixels_are_comfyui_flow_renoising(velocity) -> None:
    """The model sees frozen pixels at (1 - t) x0 + t eps, ComfyUI's CONST re-noising."""
    latent, noise = latent_and_noise()
    seen = []

    def recording(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append((x_t.clone(), t.clone()))
        return velocity(x_t, t)

    denoiser = FlowDenoiser(recording, shift=3.0)
    dd = DifferentialDenoiser(denoiser, latent, torch.zeros(16, 16), sigmas=denoiser.get_sigmas(5).float(), noise=noise)
    for sigma in dd.sigmas[1:-1]:
        dd(torch.randn_like(latent), sigma.reshape(1))
        x_t, t = seen[-1]
        torch.testing.assert_close(x_t, (1 - t) * latent + t * noise, atol=1e-6, rtol=1e-6)
    x_t, t = seen[0]
    assert t.item() == pytest.approx(float(dd.sigmas[1] / (1 + dd.sigmas[1])))


def test_the_ramp_is_linear_in_shifted_flow_time() -> None:
    denoiser = FlowDenoiser(lambda x_t, t: torch.zeros_like(x_t), shift=3.0)
    latent, noise = latent_and_noise()
    sigmas = denoiser.get_sigmas(8).float()
    dd = DifferentialDenoiser(denoiser, latent, torch.ones(16, 16), sigmas=sigmas, noise=noise)
    t = denoiser.sigma_to_t(sigmas[:-1])
    # The schedule ends in 0; the ramp ends at the model's t_min, as ComfyUI's does.
    t_to = denoiser.sigma_to_t(torch.tensor(denoiser.sigma_min))
    torch.testing.assert_close(dd.clock(sigmas[:-1].float()), ((t - t_to) / (1 - t_to)).float(), atol=1e-6, rtol=0)
    assert dd.clock(torch.tensor([math.inf])).item() == 1


def test_the_start_releases_only_full_strength_and_step_clock_counts_it_as_a_step() -> None:
    denoiser = FlowDenoiser(lambda x_t, t: torch.zeros_like(x_t), shift=3.0)
    latent, noise = latent_and_noise()
    strengths = torch.tensor([1.0, 0.76, 0.74, 0.0]).repeat(16, 4)  # 4 steps: step 1 has tau 0.75
    for clock in ("timestep", "step"):
        dd = DifferentialDenoiser(
            denoiser, latent, strengths, sigmas=denoiser.get_sigmas(4).float(), noise=noise, clock=clock, release="binary"
        )
        assert dd.mask(math.inf)[0, 0, 0, :4].tolist() == [1, 0, 0, 0], clock
        # Smooth release eases pixels in over the first step, from t = 1 down to the second level.
        smooth = DifferentialDenoiser(denoiser, latent, strengths, sigmas=dd.sigmas, noise=noise, clock=clock, release="smooth")
        tau_1 = dd.clock(dd.sigmas[1:2])
        expected = ((strengths[0, :4] - tau_1) / (1 - tau_1)).clamp(0, 1)
        torch.testing.assert_close(smooth.mask(math.inf)[0, 0, 0, :4], expected, atol=1e-5, rtol=0)
    assert tau_1.item() == pytest.approx(0.75)  # the step clock: step 1 of 4
    assert dd.mask(dd.sigmas[1].item())[0, 0, 0, :4].tolist() == [1, 1, 0, 0]
    with pytest.raises(ValueError, match="clock='timestep' or 'step'"):
        DifferentialDenoiser(denoiser, latent, strengths, sigmas=denoiser.get_sigmas(4).float(), clock="sigma")


def halves() -> torch.Tensor:
    change = torch.zeros(16, 16)
    change[:, 8:] = 1
    return change


def test_split_schedule_equals_one_run(velocity) -> None:
    latent, noise = latent_and_noise()
    denoiser = FlowDenoiser(velocity, shift=3.0)
    dd = DifferentialDenoiser(denoiser, latent, torch.linspace(0, 1, 16).repeat(16, 1), sigmas=denoiser.get_sigmas(6).float(), noise=noise)
    x = dd.start_from_noise(float(dd.sigmas[1]))
    whole = K.sampling.sample_heun(dd, x, dd.sigmas[1:], disable=True)
    part = K.sampling.sample_heun(dd, x, dd.sigmas[1:4], disable=True)
    part = K.sampling.sample_heun(dd, part, dd.sigmas[3:], disable=True)
    torch.testing.assert_close(part, whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_keeps_kept_pixels_and_changes_the_rest(velocity, sampler: str) -> None:
    latent, _ = latent_and_noise()
    denoiser = FlowDenoiser(velocity, mu=flux_mu(SEQ_LEN, FLUX_SCHEDULER))
    steps = None if sampler in OWN_STEPS else 4  # dpm_adaptive chooses its own
    edit = differential_edit(denoiser, latent, halves(), sampler=sampler, steps=steps, schedule="model")
    assert torch.isfinite(edit.result).all()
    assert edit.step_sigmas[0] == math.inf
    torch.testing.assert_close(edit.result[..., :7], latent[..., :7], atol=1e-5, rtol=0)
    assert (edit.result[..., 9:] - latent[..., 9:]).abs().mean() > 0.3


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_one_and_two_step_flow_schedules_run_on_every_sampler(velocity, sampler: str) -> None:
    """From t = 1 the first step is taken before the sampler: one step leaves the
    sampler nothing to do, two leave it one step to 0 (which k-diffusion's DPM++ 2M/3M
    SDE cannot take themselves)."""
    latent, _ = latent_and_noise()
    denoiser = FlowDenoiser(velocity, shift=3.0)
    for steps in (1, 2):
        edit = differential_edit(denoiser, latent, halves(), sampler=sampler, steps=None if sampler in OWN_STEPS else steps, schedule="model")
        assert torch.isfinite(edit.result).all()
        torch.testing.assert_close(edit.result[..., :7], latent[..., :7], atol=1e-5, rtol=0)
        assert (edit.result[..., 9:] - latent[..., 9:]).abs().mean() > 0.1


def test_partial_denoise_starts_finite_and_karras_needs_a_finite_start(velocity) -> None:
    latent, _ = latent_and_noise()
    denoiser = FlowDenoiser(velocity, shift=3.0)
    edit = differential_edit(denoiser, latent, halves(), sampler="dpmpp_2m", steps=3, schedule="model", denoise=0.5)
    assert math.isfinite(edit.step_sigmas[0]) and len(edit.step_sigmas) == 3
    torch.testing.assert_close(edit.result[..., :7], latent[..., :7], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="schedule='model'"):
        differential_edit(denoiser, latent, halves(), schedule="karras")


def test_bad_settings_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="velocity model"):
        FlowDenoiser("v")
    with pytest.raises(ValueError, match="shift"):
        FlowDenoiser(lambda x, t: x, shift=0)
    with pytest.raises(ValueError, match="image_seq_len"):
        FlowDenoiser.from_scheduler_config(lambda x, t: x, FLUX_SCHEDULER)
    with pytest.raises(ValueError, match="steps"):
        FlowDenoiser(lambda x, t: x).get_sigmas(0)
