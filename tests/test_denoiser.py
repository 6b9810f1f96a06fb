"""The wrapper as a denoiser: its call, its batches, its errors."""

import subprocess
import sys
import warnings

import pytest
import torch
from k_diffusion import sampling

from kdiff_differential import CFGDenoiser, DifferentialDenoiser

from conftest import SIZE, CondIdeal, build, ideal_denoiser, smooth_images


@pytest.fixture(scope="module")
def sigmas(ideal):
    return ideal.get_sigmas(8)


def test_a_call_blends_before_and_after_the_model(ideal, latent, sigmas):
    """One call, checked against the rule written out by hand."""
    half = torch.zeros(SIZE, SIZE)
    half[:, SIZE // 2 :] = 1  # right half free from the start
    seen = {}

    def spy(x, sigma, **kwargs):
        seen["x"] = x.clone()
        return ideal(x, sigma, **kwargs)

    dd = build(spy, latent, half, sigmas)
    sigma = sigmas[2] * torch.ones(1)
    x = torch.randn(1, 3, SIZE, SIZE)
    out = dd(x, sigma)
    frozen, free = (slice(None), slice(None), slice(None), slice(0, SIZE // 2)), (..., slice(SIZE // 2, None))
    assert torch.equal(seen["x"][free], x[free])
    assert torch.allclose(seen["x"][frozen], (latent + dd.noise * sigma)[frozen])
    assert torch.equal(out[frozen], latent[frozen])
    assert torch.equal(out[free], ideal(seen["x"], sigma)[free])


def test_noise_is_fixed_seedable_and_exposed(ideal, latent, gradient_map, sigmas):
    a = build(ideal, latent, gradient_map, sigmas, generator=torch.Generator().manual_seed(5))
    b = build(ideal, latent, gradient_map, sigmas, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.noise, b.noise)
    noise = torch.randn_like(latent)
    c = DifferentialDenoiser(ideal, latent, gradient_map, sigmas=sigmas, noise=noise)
    assert torch.equal(c.noise, noise)
    assert torch.allclose(c.noisy_latent(), latent + noise * sigmas[0])
    assert torch.allclose(c.noisy_latent(2.0), latent + noise * 2.0)


def test_a_3d_latent_is_batch_one(ideal, latent, gradient_map, sigmas):
    dd = build(ideal, latent[0], gradient_map, sigmas, noise=torch.randn(3, SIZE, SIZE), generator=None)
    assert dd.latent.shape == (1, 3, SIZE, SIZE) and dd.noise.shape == (1, 3, SIZE, SIZE)
    out = sampling.sample_euler(dd, dd.noisy_latent(), sigmas, disable=True)
    assert out.shape == (1, 3, SIZE, SIZE)


def test_guidance_outside_repeats_latent_noise_and_map(ideal, latent, gradient_map, sigmas):
    """CFGDenoiser(DifferentialDenoiser(...)): x carries twice the latent's batch."""
    dd = build(ideal, latent, gradient_map, sigmas)
    seen = []
    dd.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    x = dd.noisy_latent()
    cond = torch.ones(1)  # the same for both halves: the guided result is the plain one
    run = {"uncond": cond, "cond": cond, "cfg_scale": 3.0}
    guided = sampling.sample_euler(CFGDenoiser(dd), x, sigmas, extra_args=run, disable=True)
    assert set(seen) == {2}
    plain = sampling.sample_euler(dd, x, sigmas, disable=True)
    assert torch.allclose(guided, plain, atol=1e-5)


def test_guidance_inside_and_kwargs_go_through_untouched(ideal, latent, gradient_map, sigmas):
    """DifferentialDenoiser(CFG(...)) finds the model's clock through inner_model and
    passes uncond/cond on; a conditioned model shows the cond reached it."""
    inner = CFGDenoiser(CondIdeal(ideal))
    dd = build(inner, latent, gradient_map, sigmas)
    assert dd.span.sigma_to == pytest.approx(ideal.sigma_min.item())  # found through two wrappers
    direct = build(ideal, latent, gradient_map, sigmas)
    assert torch.equal(dd.release_sigma, direct.release_sigma)
    x, sigma = dd.noisy_latent(), sigmas[3] * torch.ones(1)
    with_cond = dd(x, sigma, uncond=torch.zeros(1), cond=torch.ones(1), cfg_scale=2.0)
    without = dd(x, sigma, uncond=torch.zeros(1), cond=torch.zeros(1), cfg_scale=2.0)
    mask = dd.mask(sigma.item()).expand_as(x)
    free, frozen = mask == 1, mask == 0
    assert torch.allclose((with_cond - without)[free], torch.tensor(0.02), atol=1e-5)  # 0.01 * cond * scale 2
    assert torch.equal(with_cond[frozen], without[frozen])


def test_per_image_maps_in_a_batch(ideal, sigmas):
    latents = smooth_images(2, seed=3)
    maps = torch.stack([torch.zeros(SIZE, SIZE), torch.ones(SIZE, SIZE)])
    dd = build(ideal, latents, maps, sigmas)
    out = sampling.sample_euler(dd, dd.noisy_latent(), sigmas, disable=True)
    assert torch.allclose(out[0], latents[0], atol=1e-5)
    assert (out[1] - latents[1]).abs().mean() > 0.1


def test_mask_reports_release_at_a_noise_level(ideal, latent, gradient_map, sigmas):
    dd = build(ideal, latent, gradient_map, sigmas, release="binary")
    first, last = dd.mask(sigmas[0].item()), dd.mask(sigmas[-2].item())
    assert first.shape == (1, 1, SIZE, SIZE)
    assert first[..., -1].eq(1).all() and first[..., :-1].eq(0).all()
    assert last[..., 1:].eq(1).all() and last[..., 0].eq(0).all()
    assert dd.mask(sigmas[3] * torch.ones(2)).shape == (2, 1, 1, SIZE, SIZE)


@pytest.mark.parametrize("release", ["binary", "smooth"])
def test_soft_strength_blends_the_release_weight_with_the_map(ideal, latent, gradient_map, sigmas, release):
    dd = build(ideal, latent, gradient_map, sigmas, strength=0.75, release=release)
    s = dd.change_map
    mask = dd.mask(sigmas[4].item())
    weight = build(ideal, latent, gradient_map, sigmas, release=release).mask(sigmas[4].item())
    assert torch.allclose(mask, 0.75 * weight + 0.25 * s)


def test_keep_map_is_one_keyword(ideal, latent, sigmas):
    change_map = (torch.arange(SIZE) / SIZE).expand(SIZE, SIZE)  # exact in binary, so 1 - (1 - s) == s
    change = build(ideal, latent, change_map, sigmas)
    keep = build(ideal, latent, 1 - change_map, sigmas, keep_map=True)
    assert torch.equal(change.release_sigma, keep.release_sigma)


# compat="comfyui": ComfyUI's rules where the default mode chooses otherwise ---------------


def test_comfyui_clock_is_the_nearest_training_timestep_whatever_the_denoisers_quantize(latent, sigmas):
    levels = (torch.arange(256) / 255).reshape(16, 16)  # every 8-bit level
    interpolated, quantized = ideal_denoiser(quantize=False), ideal_denoiser(quantize=True)
    comfy = build(interpolated, latent, levels, sigmas, compat="comfyui")
    assert torch.equal(comfy.release_sigma, build(quantized, latent, levels, sigmas, compat="comfyui").release_sigma)
    # The default clock follows the denoiser: interpolated here, so some levels release elsewhere.
    default = build(interpolated, latent, levels, sigmas)
    inside = (levels > 0) & (levels < 1)
    assert not torch.equal(default.release_sigma[..., inside], comfy.release_sigma[..., inside])


def test_strength_zero_is_the_map_by_default_and_one_under_comfyui(ideal, latent, gradient_map, sigmas):
    level = sigmas[4].item()
    assert torch.equal(build(ideal, latent, gradient_map, sigmas, strength=0).mask(level).squeeze(), gradient_map)
    comfy = build(ideal, latent, gradient_map, sigmas, compat="comfyui")
    comfy_zero = build(ideal, latent, gradient_map, sigmas, compat="comfyui", strength=0)
    assert torch.equal(comfy_zero.mask(level), comfy.mask(level))
    assert comfy_zero.strength == 0  # what was asked, as given


def test_comfyui_range_ends_at_the_models_sigma_min(ideal, latent, gradient_map, sigmas):
    """ComfyUI converts the full schedule (ending in 0) for dpm_fast/adaptive: its ramp
    ends at the model's sigma_min, not at the range's lower end."""
    span = dict(sigma_min=sigmas[-2].item(), sigma_max=sigmas[0].item())
    comfy = DifferentialDenoiser(ideal, latent, gradient_map, compat="comfyui", **span)
    default = DifferentialDenoiser(ideal, latent, gradient_map, **span)
    assert comfy.span.sigma_to == pytest.approx(ideal.sigma_min.item()) and default.span.sigma_to == span["sigma_min"]


def test_comfyui_starts_full_denoise_with_noise_times_sqrt_one_plus_sigma_squared(ideal, latent, gradient_map, sigmas):
    comfy = build(ideal, latent, gradient_map, sigmas, compat="comfyui")
    assert sigmas[0].item() == pytest.approx(ideal.sigma_max.item(), rel=1e-5)  # ComfyUI: isclose, rel 1e-5
    start = (1 + sigmas[0] ** 2).sqrt()
    assert torch.allclose(comfy.noisy_latent(), latent + comfy.noise * start, rtol=0, atol=1e-6)
    assert torch.equal(build(ideal, latent, gradient_map, sigmas).noisy_latent(), latent + comfy.noise * sigmas[0])
    # Below the model's sigma_max (denoise < 1), ComfyUI scales the noise by sigma alone.
    partial = build(ideal, latent, gradient_map, sigmas[2:], compat="comfyui")
    assert torch.equal(partial.noisy_latent(), latent + partial.noise * sigmas[2])


def test_float64_sigmas_warn_and_dd_sigmas_keep_the_sampling_in_float32(latent, gradient_map, sigmas):
    ideal = ideal_denoiser()
    seen = set()

    def strict(x, sigma):
        seen.add(x.dtype)
        return ideal(x, sigma)

    with pytest.warns(UserWarning, match="dd.sigmas"):
        dd = build(strict, latent, gradient_map, sigmas.double())
    assert dd.sigmas.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = sampling.sample_euler(dd, dd.noisy_latent(), dd.sigmas, disable=True)
    assert out.dtype == torch.float32 and seen == {torch.float32}
    # Given the float64 schedule anyway, k-diffusion promotes x; the model still sees float32.
    out = sampling.sample_euler(dd, dd.noisy_latent(), sigmas.double(), disable=True)
    assert out.dtype == torch.float64 and seen == {torch.float32}


def test_the_wrapper_moves_with_to(latent, gradient_map, sigmas):
    # .to() converts the inner model too (it is a submodule): use one of the test's own.
    dd = build(ideal_denoiser(), latent, gradient_map, sigmas).to(torch.float64)
    assert dd.latent.dtype == dd.noise.dtype == dd.release_sigma.dtype == torch.float64


@pytest.mark.parametrize("release", ["smooth", "binary"])
def test_a_wrapper_moved_to_float64_gives_what_one_built_there_gives(latent, gradient_map, sigmas, release):
    """Clocks, floors and release rules are buffers: .to() moves them with the rest."""
    moved = build(ideal_denoiser(), latent, gradient_map, sigmas, release=release).to(torch.float64)
    built = build(ideal_denoiser().to(torch.float64), latent.double(), gradient_map, sigmas.double(),
                  noise=moved.noise, generator=None, release=release)
    assert {buffer.dtype for buffer in moved.buffers()} == {torch.float64}
    # Between the schedule's levels, where no release boundary of this map falls.
    between = (sigmas[:-2] * sigmas[1:-1]).sqrt()
    for sigma in between:
        torch.testing.assert_close(moved.mask(sigma.item()), built.mask(sigma.item()), atol=1e-5, rtol=0)
    run = dict(disable=True)
    torch.testing.assert_close(
        sampling.sample_euler(moved, moved.noisy_latent(), sigmas.double(), **run),
        sampling.sample_euler(built, built.noisy_latent(), built.sigmas, **run), atol=1e-5, rtol=0,
    )


def test_wrapping_a_wrapper_twice_warns(ideal, latent, gradient_map, sigmas):
    once = build(ideal, latent, gradient_map, sigmas)
    with pytest.warns(UserWarning, match="already contains a DifferentialDenoiser"):
        build(CFGDenoiser(once), latent, gradient_map, sigmas)


def test_import_does_not_load_k_diffusion():
    code = "import sys, kdiff_differential; print('k_diffusion' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(inner=42), TypeError, "inner must be a callable"),
        (dict(sigmas=[14.6, 1.0, 0.0]), TypeError, "sigmas must be a torch.Tensor (the sampler's schedule, e.g. torch.tensor(...)), got list"),
        (dict(latent=torch.ones(SIZE, SIZE)), ValueError, "latent must be (C, H, W), (B, C, H, W) or a video's (B, C, F, H, W)"),
        (dict(latent=torch.ones(1, 1, 1, 3, SIZE, SIZE)), ValueError, "latent must be"),
        (dict(latent=torch.ones(1, 3, SIZE, SIZE, dtype=torch.long)), TypeError, "float"),
        (dict(latent=torch.full((1, 3, SIZE, SIZE), float("nan"))), ValueError, "finite"),
        (dict(latent=[1.0]), TypeError, "latent must be a torch.Tensor"),
        (dict(change_map=torch.full((SIZE, SIZE), 2.0)), ValueError, "[0, 1]"),
        (dict(change_map=torch.full((SIZE, SIZE), float("nan"))), ValueError, "finite"),
        (dict(change_map=torch.ones(2, SIZE, SIZE)), ValueError, "batch 2"),
        (dict(noise=torch.ones(1, 3, 8, 8)), ValueError, "noise must have the latent's shape"),
        (dict(noise=torch.ones(1, 3, SIZE, SIZE), generator=torch.Generator()), ValueError, "not both"),
        (dict(sigmas=torch.tensor([1.0, 2.0])), ValueError, "descending"),
        (dict(sigmas=None), ValueError, "sigma_min"),
        (dict(strength=1.5), ValueError, "strength must lie in [0, 1]"),
        (dict(strength="high"), TypeError, "strength must be a number"),
        (dict(clock="karras"), ValueError, "'timestep', 'step', 'sigma'"),
        (dict(compat="a1111"), ValueError, "None, 'comfyui'"),
        (dict(compat="comfyui", clock="step"), ValueError, "timestep clock"),
        (dict(keep_map=1), TypeError, "keep_map"),
        (dict(release="soft"), ValueError, "release must be one of 'smooth', 'binary'"),
    ],
)
def test_bad_arguments_fail_when_the_wrapper_is_built(ideal, latent, gradient_map, sigmas, change, error, words):
    kwargs = dict(inner=ideal, latent=latent, change_map=gradient_map, sigmas=sigmas)
    if "noise" not in change:
        kwargs["generator"] = torch.Generator()
    kwargs.update(change)
    with pytest.raises(error) as raised:
        DifferentialDenoiser(kwargs.pop("inner"), kwargs.pop("latent"), kwargs.pop("change_map"), **kwargs)
    assert words in str(raised.value)


def test_step_clock_without_a_schedule_fails_when_built(ideal, latent, gradient_map):
    with pytest.raises(ValueError, match="clock='step' needs the schedule"):
        DifferentialDenoiser(ideal, latent, gradient_map, sigma_min=0.1, sigma_max=10.0, clock="step")


@pytest.mark.parametrize(
    "x, sigma, error, words",
    [
        (torch.ones(1, 4, SIZE, SIZE), torch.ones(1), ValueError, "x must be (k*1, 3, 16, 16)"),
        (torch.ones(1, 3, 8, 8), torch.ones(1), ValueError, "got shape (1, 3, 8, 8)"),
        (torch.ones(3, SIZE, SIZE), torch.ones(1), ValueError, "x must be"),
        ("x", torch.ones(1), TypeError, "x must be a torch.Tensor"),
        (torch.ones(2, 3, SIZE, SIZE), torch.ones(3), ValueError, "sigma must be a number or shape (2,)"),
    ],
)
def test_bad_calls_are_named(ideal, latent, gradient_map, sigmas, x, sigma, error, words):
    dd = build(ideal, latent, gradient_map, sigmas)
    with pytest.raises(error) as raised:
        dd(x, sigma)
    assert words in str(raised.value)


def test_a_batch_that_is_not_a_whole_multiple_is_refused(ideal, gradient_map, sigmas):
    dd = build(ideal, smooth_images(2, seed=3), gradient_map, sigmas)
    with pytest.raises(ValueError, match=r"x must be \(k\*2, 3, 16, 16\) for a whole k"):
        dd(torch.ones(3, 3, SIZE, SIZE), torch.ones(3))
