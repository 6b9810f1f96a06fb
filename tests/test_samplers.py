"""The guarantees, with every k-diffusion sampler."""

import pytest
import torch
from k_diffusion import external, layers, sampling

from kdiff_differential import DifferentialDenoiser
from kdiff_differential.maps.latent import latent_map
from samplers.comfyui_reference import ComfyUIReference

from conftest import ADAPTIVE, SAMPLERS, SCHEDULED, SIZE, TinyCompVisNet, TinyEDMNet, ideal_denoiser, smooth_images

STEPS = 40
# Strength bands of the left-to-right gradient map: columns with s = 0, then three thirds.
BANDS = [slice(0, 1), slice(1, 6), slice(6, 11), slice(11, 16)]


def run(name, model, x, *, sigmas=None, sigma_min=None, sigma_max=None, seed=0):
    """One sampler run; stochastic samplers draw from the global RNG, seeded here."""
    torch.manual_seed(seed)
    # CompVis models take a cond (CompVisVDenoiser requires one); layers.Denoiser's net takes none.
    extra_args = {} if isinstance(find_inner(model), layers.Denoiser) else {"cond": None}
    sample = getattr(sampling, f"sample_{name}")
    if name in ADAPTIVE:
        kwargs = {"n": STEPS} if name == "dpm_fast" else {}
        return sample(model, x, sigma_min, sigma_max, extra_args=extra_args, disable=True, **kwargs)
    return sample(model, x, sigmas, extra_args=extra_args, disable=True)


def find_inner(model):
    return getattr(model, "inner_model", None) or getattr(model, "inner", None)


def differential(name, inner, latent, change_map, sigmas, **kwargs):
    """The wrapper and its output for sampler ``name``, over ``sigmas`` or their range."""
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(7))
    if name in ADAPTIVE:
        span = dict(sigma_min=sigmas[-2].item(), sigma_max=sigmas[0].item())
        dd = DifferentialDenoiser(inner, latent, change_map, noise=noise, **span, **kwargs)
        return dd, run(name, dd, dd.noisy_latent(), **span)
    dd = DifferentialDenoiser(inner, latent, change_map, sigmas=sigmas, noise=noise, **kwargs)
    return dd, run(name, dd, dd.noisy_latent(), sigmas=sigmas)


@pytest.fixture(scope="module")
def sigmas(ideal):
    return ideal.get_sigmas(STEPS)


@pytest.fixture(scope="module")
def outputs(ideal, latent, gradient_map, sigmas):
    """Every sampler run once on the gradient map, default mode, on a batch of four
    copies of the latent with their own noise: changes are averaged over the four."""
    copies = latent.expand(4, -1, -1, -1).clone()
    return {name: differential(name, ideal, copies, gradient_map, sigmas) for name in SAMPLERS}


def change_per_column(out, latent):
    return (out - latent).abs().mean(dim=(0, 1, 2))


@pytest.mark.parametrize("name", SCHEDULED)
def test_strength_zero_pixels_end_as_the_original(name, outputs, latent):
    _, out = outputs[name]
    assert torch.allclose(out[..., 0], latent[..., 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_adaptive_samplers_hold_strength_zero_pixels_at_their_last_noise_level(name, outputs, latent, sigmas):
    """dpm_fast/dpm_adaptive stop at sigma_min, not 0: kept pixels end as the original
    re-noised to sigma_min with the wrapper's fixed noise."""
    dd, out = outputs[name]
    expected = latent + dd.noise * sigmas[-2]
    assert torch.allclose(out[..., 0], expected[..., 0], atol=1e-3, rtol=0)


@pytest.mark.parametrize("name", ADAPTIVE)
def test_finish_takes_a_range_samplers_output_to_the_original_where_kept(name, outputs, latent, sigmas):
    """docs/python.md's recipe: sample_dpm_adaptive(dd, x, lo, hi), then dd.finish(x)."""
    dd, out = outputs[name]
    done = dd.finish(out, cond=None)
    assert torch.equal(done[..., 0], latent.expand_as(done)[..., 0])  # exact, not to a tolerance
    assert (done[..., -1] - out[..., -1]).abs().max() < 0.5  # released pixels only lose the last noise


@pytest.mark.parametrize("name", SAMPLERS)
def test_strength_one_pixels_are_regenerated(name, outputs, latent):
    _, out = outputs[name]
    assert change_per_column(out, latent)[-1] > 0.3


@pytest.mark.parametrize("name", SAMPLERS)
def test_average_change_grows_with_strength(name, outputs, latent):
    _, out = outputs[name]
    change = change_per_column(out, latent)
    bands = torch.stack([change[band].mean() for band in BANDS])
    assert torch.all(bands[1:] > bands[:-1]), bands


def test_a_split_schedule_equals_an_unsplit_one(ideal, latent, gradient_map, sigmas):
    dd = DifferentialDenoiser(ideal, latent, gradient_map, sigmas=sigmas, generator=torch.Generator().manual_seed(0))
    whole = sampling.sample_euler(dd, dd.noisy_latent(), sigmas, disable=True)
    k = STEPS // 3
    first = sampling.sample_euler(dd, dd.noisy_latent(), sigmas[: k + 1], disable=True)
    split = sampling.sample_euler(dd, first, sigmas[k:], disable=True)
    assert torch.equal(split, whole)


# ComfyUI parity ------------------------------------------------------------------


def comfyui_reference(name, inner, latent, change_map, sigmas, noise, strength):
    # For dpm_fast/adaptive too, ComfyUI's node sees the full schedule, ending in 0.
    mask = latent_map(change_map, latent.shape, resize="bilinear")
    return ComfyUIReference(inner, latent, mask, sigmas, noise, strength)


def assert_comfyui_parity(name, inner, latent, change_map, sigmas, strength=1.0):
    dd, ours = differential(name, inner, latent, change_map, sigmas, compat="comfyui", strength=strength)
    reference = comfyui_reference(name, inner, latent, change_map, sigmas, dd.noise, strength)
    x = dd.noisy_latent()
    if name in ADAPTIVE:
        theirs = run(name, reference, x, sigma_min=sigmas[-2].item(), sigma_max=sigmas[0].item())
    else:
        theirs = run(name, reference, x, sigmas=sigmas)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    return ours


@pytest.mark.parametrize("name", SAMPLERS)
def test_comfyui_parity(name, ideal, latent, gradient_map, sigmas):
    ours = assert_comfyui_parity(name, ideal, latent, gradient_map, sigmas)
    if name in SCHEDULED:
        # ComfyUI frees strength-0 pixels at its last call (at the model's sigma_min),
        # so they move; the default mode keeps them.
        assert not torch.allclose(ours[..., 0], latent[..., 0], atol=1e-5)


@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "dpmpp_sde"])
def test_comfyui_parity_batched_soft_and_quantized(name, latent, sigmas):
    latents = smooth_images(2, seed=4)
    maps = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(1))  # resized to 16x16
    assert_comfyui_parity(name, ideal_denoiser(), latents, maps, sigmas)
    assert_comfyui_parity(name, ideal_denoiser(), latents, maps, sigmas, strength=0.6)
    assert_comfyui_parity(name, ideal_denoiser(quantize=True), latents, maps, sigmas)
    assert_comfyui_parity(name, ideal_denoiser(), latents, maps, sigmas, strength=0)  # ComfyUI: 0 acts as 1
    assert_comfyui_parity(name, ideal_denoiser("v"), latents, maps, sigmas, strength=0.35)


@pytest.mark.parametrize("name", SAMPLERS)
def test_comfyui_parity_on_a_schedule_ending_above_the_models_sigma_min(name, ideal, latent, gradient_map, sigmas):
    """As ComfyUI's `simple` scheduler's: the ramp still ends at the model's sigma_min."""
    short = torch.cat([sigmas[:-8], sigmas.new_zeros(1)])
    assert short[-2] > 2 * ideal.sigma_min
    assert_comfyui_parity(name, ideal, latent, gradient_map, short)


# Other models --------------------------------------------------------------------


def neural_models():
    eps, v = TinyCompVisNet(seed=0), TinyCompVisNet(seed=1)
    return {
        "compvis-eps": external.CompVisDenoiser(eps),
        "compvis-v": external.CompVisVDenoiser(v),
        "layers-denoiser": layers.Denoiser(TinyEDMNet(), sigma_data=0.5),
        "ideal-v": ideal_denoiser(prediction="v"),
    }


@pytest.mark.parametrize("model", neural_models().items(), ids=lambda item: item[0])
@pytest.mark.parametrize("name", ["euler", "heun", "dpmpp_2m", "dpmpp_2m_sde"])
def test_other_models_keep_and_regenerate(model, name, gradient_map):
    _, inner = model
    latent = smooth_images(1, seed=5)
    if isinstance(inner, layers.Denoiser):  # continuous: no sigma_to_t, no sigma_min
        sigmas = sampling.get_sigmas_karras(12, 0.02, 20.0)
    else:
        sigmas = inner.get_sigmas(12)
    with torch.no_grad():
        dd, out = differential(name, inner, latent, gradient_map, sigmas)
    assert torch.allclose(out[..., 0], latent[..., 0], atol=1e-5, rtol=0)
    change = change_per_column(out, latent)
    assert change[-1] > 0.1 and change[-1] > change[:4].mean()
