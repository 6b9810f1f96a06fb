"""Every model family against diffusers' own pipeline, one row per family.

Each row says how to call the family through our loader (the tiny folder of
``tiny_family``, the extra arguments), how to run diffusers' pipeline of that family on
the same folder, and the tolerance, relative to the largest value of diffusers' latent.

- With the map all ones the wrapper passes everything through: our Euler run is
  diffusers' pipeline with its own Euler scheduler, from the same noise.
- With a graded map (exact 0 and 1 at its ends) diffusers' pipeline runs again, and a
  Differential Diffusion loop written here (:func:`differential_step`, diffusers'
  ``callback_on_step_end``) holds the frozen pixels after each of diffusers' steps: the
  project's rule with ``release="binary"`` and the timestep clock, written from its
  documentation (``release.py``, ``clocks.py``), not from its code.
- The 9-channel inpainting UNets against StableDiffusion(XL)InpaintPipeline, with a
  binary map: the mask and masked-image latent are diffusers' own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import diffusers_euler, halves, ramp_image
from families_tiny import QWEN3_LENGTH

from kdiff_differential import load_pipeline
from kdiff_differential.core.sampling import differential_edit

FLUX_PACK = diffusers.FluxPipeline._pack_latents  # Flux.1's and Qwen-Image's 2x2 patches, as tokens


def pack_2x2(latent: torch.Tensor) -> torch.Tensor:
    return FLUX_PACK(latent, latent.shape[0], latent.shape[1], *latent.shape[-2:])


def unpack_flux(height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda tokens: diffusers.FluxPipeline._unpack_latents(tokens, height, width, 2)


def unpack_qwen(height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """diffusers' packed output -> (1, C, h, w), the frame axis dropped."""
    return lambda tokens: diffusers.QwenImagePipeline._unpack_latents(tokens, height, width, 2)[:, :, 0]


def klein_latent(reference) -> Callable[[torch.Tensor], torch.Tensor]:
    """Flux2KleinPipeline returns the VAE's latent: patchified 2x2 and normalised by the
    VAE's statistics, it is ours."""
    bn = reference.vae.bn
    return lambda raw: (F.pixel_unshuffle(raw, 2) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)


def klein_pack(latent: torch.Tensor) -> torch.Tensor:
    return diffusers.Flux2KleinPipeline._pack_latents(latent)


def take_the_vae_mode(monkeypatch: pytest.MonkeyPatch, module) -> None:
    """diffusers encodes an input image with a sample of the VAE's posterior, we with its
    mode: ``module``'s pipeline is told to take the mode too."""
    retrieve = module.retrieve_latents
    monkeypatch.setattr(module, "retrieve_latents", lambda output, generator=None, sample_mode="sample": retrieve(output, sample_mode="argmax"))


def fill_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.pipelines.flux import pipeline_flux_fill

    take_the_vae_mode(monkeypatch, pipeline_flux_fill)


def inpaint_patch(monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_inpaint

    take_the_vae_mode(monkeypatch, pipeline_stable_diffusion_inpaint)
    take_the_vae_mode(monkeypatch, pipeline_stable_diffusion_xl_inpaint)


def qwen_edit_patch(height: int, width: int) -> Callable[[pytest.MonkeyPatch], None]:
    """diffusers resizes the reference to about 1 MP; it is told to keep the edit's size, as ours does."""

    def patch(monkeypatch: pytest.MonkeyPatch) -> None:
        from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

        monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: (width, height, None))

    return patch


def as_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array)


def halves_pil(height: int, width: int) -> Image.Image:
    return Image.fromarray((halves(height, width).numpy() * 255).astype(np.uint8))


@dataclass(frozen=True)
class Family:
    """A row: ``folder`` (a ``tiny_family`` name) run through our loader with ``ours(pipe,
    image)`` as extra arguments, and through diffusers' pipeline class ``kind`` with
    ``theirs(image)`` as its call's settings; ``steps`` of Euler on the family's default
    schedule (Karras for the UNets, the model's for the flow models)."""

    folder: str
    kind: str
    size: tuple[int, int]  # pixels, (H, W)
    steps: int
    ours: Callable[[Any, np.ndarray], dict]
    theirs: Callable[[np.ndarray], dict]
    # max |ours - theirs| over the largest |theirs|, at most; measured at most 2.7e-6 on
    # any row (the v-prediction UNets; the flow models ~3e-7), map all ones or graded.
    tolerance: float = 1e-5
    flow: bool = True  # flow matching (x_t = (1 - t) x0 + t noise), else a UNet on a k-diffusion schedule
    pack: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # our latent -> the pipeline's latents
    packs_the_start: bool = False  # the pipeline packs the latents it is given itself (FLUX.2)
    unpack: Optional[Callable[[Any], Callable[[torch.Tensor], torch.Tensor]]] = None  # given the pipeline
    patch: Optional[Callable[[pytest.MonkeyPatch], None]] = None  # what diffusers is told first
    range_steps: Optional[int] = None  # FLUX.2: the steps whose shift ends the clock's range (the default steps)
    img2img: bool = False  # the pipeline noises the latent it is given as ``image`` (SDXL's refiner)


def sd_row(folder: str, size: tuple[int, int]) -> Family:
    return Family(
        folder, "StableDiffusionPipeline", size, 4, flow=False,
        ours=lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt="blurry", height=size[0], width=size[1], guidance_scale=3.0),
    )


def sdxl_row(folder: str, negative: str) -> Family:
    # diffusers zeroes the negative only when none is given (an explicit "" it encodes);
    # ours takes "" for none.
    size = (24, 32)
    return Family(
        folder, "StableDiffusionXLPipeline", size, 4, flow=False,
        ours=lambda pipe, image: pipe.extra_args("a red cat", negative, 3.0, size=size),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt=negative or None, height=size[0], width=size[1], guidance_scale=3.0),
    )


def flux_like(folder: str, kind: str, steps: int, ours, theirs, **row) -> Family:
    """A Flux.1-style row: 32 x 36 pixels, a 4-channel latent packed 2x2 into tokens."""
    size = (32, 36)
    return Family(folder, kind, size, steps, ours, lambda image: dict(theirs(image), max_sequence_length=16),
                  pack=pack_2x2, unpack=lambda reference: unpack_flux(*size), **row)


SIZE = (32, 36)
FAMILIES = {
    # End to end: the text encoding, guidance, the epsilon or v parametrisation and our
    # default schedule (Karras) agree with diffusers' to float32 rounding.
    "sd-eps": sd_row("sd-eps", (32, 40)),  # diffusers wants multiples of 8 pixels
    "sd-v": sd_row("sd-v", (32, 40)),
    # Both encoders' penultimate states, the pooled projection, the time ids of a
    # non-square size, the negative prompt (or, without one, the zeros of
    # force_zeros_for_empty_prompt), the prediction type.
    "sdxl-eps": sdxl_row("sdxl-eps", "blurry"),
    "sdxl-eps-no-negative": sdxl_row("sdxl-eps", ""),
    "sdxl-v": sdxl_row("sdxl-v", "blurry"),
    "sdxl-v-no-negative": sdxl_row("sdxl-v", ""),
    # StableDiffusionXLImg2ImgPipeline at strength 1 on our latent, with our noise (its
    # own draw replaced): the second encoder alone, the aesthetic-score time ids of
    # prompt and negative.
    "sdxl-refiner": Family(
        "sdxl-refiner", "StableDiffusionXLImg2ImgPipeline", (24, 32), 4, flow=False, img2img=True,
        ours=lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0, size=(24, 32)),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt="blurry", strength=1.0, guidance_scale=3.0),
    ),
    # The folder's text encoding, guidance, and the model's shifted schedule.
    "sd3": Family(
        "sd3", "StableDiffusion3Pipeline", SIZE, 4,
        ours=lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt="blurry", height=32, width=36, guidance_scale=3.0, max_sequence_length=16),
    ),
    # Flux.1 dev: the guidance embedded, the latent packed, the schedule shifted by the resolution.
    "flux": flux_like(
        "flux", "FluxPipeline", 4, lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0),
        lambda image: dict(prompt="a red cat", height=32, width=36, guidance_scale=3.0),
    ),
    # schnell's scheduler shifts by a constant (no dynamic shifting), and FluxPipeline
    # still passes its own sigmas, linspace(1, 1/n, n): the same 4 steps as ours.
    "flux-schnell-fixed": flux_like(
        "flux-schnell-fixed", "FluxPipeline", 4, lambda pipe, image: pipe.extra_args("a red cat"),
        lambda image: dict(prompt="a red cat", height=32, width=36),
    ),
    # The inpainting input (the masked image's packed latent and the half mask at the
    # VAE's factor, packed) as FluxFillPipeline builds it.
    "flux-fill": flux_like(
        "flux-fill", "FluxFillPipeline", 3,
        lambda pipe, image: pipe.extra_args("a red cat", "", 3.0, image=image, change_map=halves(*SIZE)),
        lambda image: dict(prompt="a red cat", image=as_pil(image), mask_image=halves_pil(*SIZE), height=32, width=36, guidance_scale=3.0),
        patch=fill_patch,
    ),
    # T5 with its attention mask (the first padding token kept), the mask beside the image
    # tokens', guidance with the negative prompt.
    "chroma": flux_like(
        "chroma", "ChromaPipeline", 3, lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0),
        lambda image: dict(prompt="a red cat", negative_prompt="blurry", height=32, width=36, guidance_scale=3.0),
    ),
    # The input image's tokens beside the output latent's (position ids (1, row, col)),
    # the prediction taken on the output tokens.
    "kontext": flux_like(
        "kontext", "FluxKontextPipeline", 3, lambda pipe, image: pipe.extra_args("a red cat", "", 3.0, image=image),
        lambda image: dict(image=as_pil(image), prompt="a red cat", height=32, width=36, max_area=32 * 36, _auto_resize=False, guidance_scale=3.0),
    ),
    # Qwen3's chat-templated prompt (second-to-last layer, real tokens only), the
    # transformer's reversed clock and negated prediction, guidance with the negative
    # prompt (ZImagePipeline's guidance_scale 2 is our cfg 3), the shifted linspace(1, 1/n)
    # schedule. A Turbo folder runs 8 steps without guidance.
    "zimage-turbo": Family(
        "zimage-turbo", "ZImagePipeline", SIZE, 3, ours=lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt="blurry", height=32, width=36, guidance_scale=2.0, max_sequence_length=QWEN3_LENGTH),
    ),
    # Qwen3's layers 9, 18 and 27 side by side, 4-axis position ids, FLUX.2's step-
    # dependent shift, the latent patchified and normalised by the VAE's statistics.
    # Distilled: 4 steps, one pass, any cfg ignored (as there); the base: guidance with
    # the empty negative prompt, as there.
    "klein": Family(
        "klein", "Flux2KleinPipeline", SIZE, 4, ours=lambda pipe, image: pipe.extra_args("a red cat", "", 5.0),
        theirs=lambda image: dict(prompt="a red cat", height=32, width=36, guidance_scale=5.0, max_sequence_length=QWEN3_LENGTH),
        pack=klein_pack, packs_the_start=True, unpack=klein_latent, range_steps=4,
    ),
    "klein-base": Family(
        "klein-base", "Flux2KleinPipeline", SIZE, 3, ours=lambda pipe, image: pipe.extra_args("a red cat", "", 3.0),
        theirs=lambda image: dict(prompt="a red cat", height=32, width=36, guidance_scale=3.0, max_sequence_length=QWEN3_LENGTH),
        pack=klein_pack, packs_the_start=True, unpack=klein_latent, range_steps=50,
    ),
    # The template's tokens dropped, true guidance with the negative prompt and the guided
    # velocity rescaled to the prompt's norm, the schedule's dynamic shift and terminal
    # stretch; the latent normalised as its VAE's config says.
    "qwen": Family(
        "qwen", "QwenImagePipeline", SIZE, 3, ours=lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt="blurry", true_cfg_scale=3.0, height=32, width=36),
        pack=pack_2x2, unpack=lambda reference: unpack_qwen(*SIZE),
    ),
    # The input image's latent tokens after the output latent's (a second image to the
    # positions), the prediction taken on the output tokens, the prompt read with the image
    # by the VL encoder.
    "qwen-edit": Family(
        "qwen-edit", "QwenImageEditPipeline", SIZE, 3, ours=lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0, image=image),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt="blurry", true_cfg_scale=3.0, height=32, width=36, image=as_pil(image)),
        pack=pack_2x2, unpack=lambda reference: unpack_qwen(*SIZE), patch=qwen_edit_patch(*SIZE),
    ),
}


def ours(family: Family, pipe, image: np.ndarray, latent: torch.Tensor, change: torch.Tensor, **settings):
    """Our Euler run: the family's denoiser, the wrapper and k-diffusion's Euler, from seed 5."""
    return differential_edit(
        pipe.denoiser_for(latent), latent, change, sampler="euler", steps=family.steps,
        schedule="model" if family.flow else "karras", extra_args=family.ours(pipe, image), seed=5, **settings,
    )


def theirs(family: Family, folder, image: np.ndarray, noise: torch.Tensor, latent: torch.Tensor, monkeypatch: pytest.MonkeyPatch,
           edit, callback: Optional[Callable] = None) -> torch.Tensor:
    """diffusers' pipeline of ``family`` on ``folder`` from ``noise`` (and, for a UNet, the
    start ``latent + noise * sigma_max``), ``callback`` its callback_on_step_end: its
    output latent, in our latent space."""
    if family.patch is not None:
        family.patch(monkeypatch)
    settings = family.theirs(image)
    if callback is not None:
        settings["callback_on_step_end"] = callback
    kind = getattr(diffusers, family.kind)
    if not family.flow and not family.img2img:
        return diffusers_euler(kind, folder, edit, start=latent, **settings)
    reference = kind.from_pretrained(folder, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    if family.img2img:
        from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as img2img

        monkeypatch.setattr(img2img, "randn_tensor", lambda shape, **_: noise.reshape(shape).clone())
        reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(
            reference.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace",
        )
        out = reference(image=latent, num_inference_steps=family.steps, output_type="latent", **settings).images
        torch.testing.assert_close(edit.wrapper.sigmas, reference.scheduler.sigmas, rtol=1e-6, atol=0)
        return out
    shifts = record_the_shift(reference.scheduler)
    if callback is not None:
        callback.shifts = shifts
    start = noise if family.pack is None or family.packs_the_start else family.pack(noise)
    out = reference(latents=start, num_inference_steps=family.steps, output_type="latent", **settings).images
    return out if family.unpack is None else family.unpack(reference)(out)


def record_the_shift(scheduler) -> list:
    """The ``mu`` each of the scheduler's ``set_timesteps`` calls is given (the dynamic
    shift the pipeline computes), recorded as the pipeline runs."""
    shifts: list = []
    set_timesteps = scheduler.set_timesteps

    @functools.wraps(set_timesteps)  # the pipelines read its signature
    def recording(*args, mu=None, **kwargs):
        shifts.append(mu)
        return set_timesteps(*args, mu=mu, **kwargs)

    scheduler.set_timesteps = recording
    return shifts


@pytest.fixture(params=list(FAMILIES))
def family(request: pytest.FixtureRequest) -> Family:
    return FAMILIES[request.param]


def test_euler_with_everything_released_is_the_diffusers_pipeline(family: Family, tiny_family, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tiny_family(family.folder)
    pipe = load_pipeline(folder)
    image = ramp_image(*family.size)
    shape = pipe.encode(image).shape
    # All released: only the latent's shape matters (the refiner's start is the latent noised).
    latent = torch.randn(shape, generator=torch.Generator().manual_seed(1)) if family.img2img else torch.zeros(shape)
    edit = ours(family, pipe, image, latent, torch.ones(shape[-2:]))
    noise = edit.wrapper.noise
    expected = theirs(family, folder, image, noise, latent if family.img2img else None, monkeypatch, edit)
    if family.img2img:
        assert (expected - latent).abs().mean() > 0.1  # the model moved the picture
    else:
        # The model moved the start (noise * sigma_max; a flow model's, the noise itself)
        # and did not land on the unit noise: the comparison is not of two copies of either.
        assert (expected - noise).abs().mean() > 0.1
        if not family.flow:
            assert (expected - noise * edit.wrapper.sigmas[0]).abs().mean() > 0.1
    assert (edit.result - expected).abs().max() < family.tolerance * expected.abs().max()


def graded(size: tuple[int, int]) -> torch.Tensor:
    """A change map (h, w) rising pixel by pixel in reading order: 0 over the first
    quarter of the pixels, 1 over the last, linearly between (a distinct strength for
    each pixel there, so that every step frees some)."""
    height, width = size
    count = height * width
    return ((torch.arange(count) + 0.5) * 2 / count - 0.5).clamp(0, 1).reshape(height, width)


def differential_step(family: Family, latent: torch.Tensor, noise: torch.Tensor, change: torch.Tensor) -> Callable:
    """Differential Diffusion around diffusers' loop, as a ``callback_on_step_end``: after
    diffusers' step i, the pixels not free at step i are the original re-noised with
    ``noise`` to the next level. With the start (every pixel the original re-noised to
    the first level; a flow model's: the noise), every frozen pixel is the re-noised
    original when the network sees it, and a pixel released at step i starts from it.

    The rule, from the project's documentation: release="binary" frees a pixel of
    strength s at a call when ``s >= tau``, strength 0 never; the timestep clock's
    ``tau = (t - t_to) / (t_from - t_to)``, with t the model's timestep of the call's
    level (a UNet: diffusers' timestep; a flow model: its time t), t_from that of the
    schedule's first level and t_to that of the model's smallest training level: t = 0
    for a UNet, for a flow model the 1/1000 of training shifted as the schedule is
    (``k u / (1 + (k - 1) u)``, k the shift or e^mu; FLUX.2's mu depends on the steps,
    and its range's is that of the family's default steps). The re-noised original at level
    sigma: ``x0 + sigma * noise`` (a UNet); at flow time t: ``(1 - t) x0 + t noise``.
    The callback records each step's tau (``.taus``); :func:`theirs` hands it the mu the
    pipeline gives its scheduler (``.shifts``).
    """

    def step(pipe, i: int, timestep, kwargs: dict) -> dict:
        scheduler = pipe.scheduler
        if family.flow:
            times = scheduler.sigmas
            if not scheduler.config.use_dynamic_shifting:
                k = scheduler.config.shift
            elif family.range_steps is not None:  # FLUX.2: the range's shift is that of the default steps
                from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

                k = math.exp(compute_empirical_mu(latent.shape[-2] * latent.shape[-1], family.range_steps))
            else:
                k = math.exp(step.shifts[-1])
            u = 1 / scheduler.config.num_train_timesteps
            t_to = k * u / (1 + (k - 1) * u)
        else:
            times, t_to = scheduler.timesteps, 0.0
        tau = float((times[i] - t_to) / (times[0] - t_to))
        step.taus.append(tau)
        free = ((change > 0) & (change >= tau)).expand_as(latent)
        level = scheduler.sigmas[i + 1]
        held = (1 - level) * latent + level * noise if family.flow else latent + level * noise
        if family.pack is not None:
            free, held = family.pack(free.float()) > 0.5, family.pack(held)
        latents = kwargs["latents"]
        return {"latents": torch.where(free, latents, held.to(latents.dtype))}

    step.taus = []
    return step


def test_a_graded_map_is_the_differential_loop_around_the_diffusers_pipeline(family: Family, tiny_family, monkeypatch: pytest.MonkeyPatch) -> None:
    """A map with exact 0 and 1 and a ramp between, the binary release and the timestep
    clock: our family's denoiser, wrapper and k-diffusion Euler give diffusers' pipeline
    with the Differential Diffusion step of :func:`differential_step`."""
    folder = tiny_family(family.folder)
    pipe = load_pipeline(folder)
    image = ramp_image(*family.size)
    latent = pipe.encode(image)
    change = graded(latent.shape[-2:])
    edit = ours(family, pipe, image, latent, change, release="binary", clock="timestep")
    step = differential_step(family, latent, edit.wrapper.noise, change)
    expected = theirs(family, folder, image, edit.wrapper.noise, latent, monkeypatch, edit, step)
    taus = torch.tensor(step.taus)
    assert len(taus) == family.steps
    # Our clock at the schedule's levels is the loop's tau; no strength lies within ten
    # times that agreement of a step's tau (where the two sides could round apart); and
    # the ramp's pixels are freed at two steps or more: the map is graded in time.
    torch.testing.assert_close(edit.wrapper.clock(edit.wrapper.sigmas[: family.steps].float()), taus, rtol=0, atol=1e-6)
    ramp = change[(change > 0) & (change < 1)].unique()
    assert (ramp[:, None] - taus[None]).abs().min() > 1e-5
    assert len({int((s >= taus).int().argmax()) for s in ramp if (s >= taus).any()}) >= 2
    kept, changed = change == 0, change == 1
    torch.testing.assert_close(expected[..., kept], latent[..., kept], rtol=0, atol=1e-5)  # the loop's own check
    assert (expected[..., changed] - latent[..., changed]).abs().mean() > 0.05
    error = (edit.result - expected).abs().max() / expected.abs().max()
    assert error < family.tolerance, error


def inpainting_row(folder: str, kind: str) -> Family:
    """A 9-channel UNet: our extra channels from the half map; diffusers' from its own
    preparation (prepare_mask_latents: the mask at latent size and the latent of the
    image with the pixels to change set to 0), at strength 1 from our start."""
    size = (24, 32)
    return Family(
        folder, kind, size, 4, flow=False, patch=inpaint_patch,
        ours=lambda pipe, image: pipe.extra_args("a red cat", "blurry", 3.0, image=image, change_map=halves(*size)),
        theirs=lambda image: dict(prompt="a red cat", negative_prompt="blurry", image=as_pil(image), mask_image=halves_pil(*size),
                                  height=size[0], width=size[1], strength=1.0, guidance_scale=3.0),
    )


INPAINTING = {
    "sd-inpaint": inpainting_row("sd-inpaint", "StableDiffusionInpaintPipeline"),
    "sdxl-inpaint": inpainting_row("sdxl-inpaint", "StableDiffusionXLInpaintPipeline"),
}


@pytest.mark.parametrize("name", list(INPAINTING))
def test_an_inpainting_unet_with_a_binary_map_is_the_diffusers_inpainting_pipeline(name: str, tiny_family, monkeypatch: pytest.MonkeyPatch) -> None:
    """The half map, kept pixels held by :func:`differential_step` around
    StableDiffusion(XL)InpaintPipeline (which, for a 9-channel UNet, holds none itself):
    our wrapper, the family's denoiser with its inpainting channels and Euler give its latent."""
    family = INPAINTING[name]
    folder = tiny_family(family.folder)
    pipe = load_pipeline(folder)
    assert pipe.inpainting
    image = ramp_image(*family.size)
    latent = pipe.encode(image)
    change = halves(*latent.shape[-2:])
    edit = ours(family, pipe, image, latent, change, release="binary")
    step = differential_step(family, latent, edit.wrapper.noise, change)
    expected = theirs(family, folder, image, edit.wrapper.noise, latent, monkeypatch, edit, step)
    half = latent.shape[-1] // 2
    torch.testing.assert_close(expected[..., :half], latent[..., :half], rtol=0, atol=1e-5)
    assert (expected[..., half:] - latent[..., half:]).abs().mean() > 0.05
    error = (edit.result - expected).abs().max() / expected.abs().max()
    assert error < family.tolerance, error
