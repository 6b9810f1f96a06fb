"""Every k-diffusion sampler keeps the kept pixels on every model family: one row per
family (its tiny folder, the samplers it runs, the steps, schedule and extra arguments),
the halves map, kept latent pixels exact and the rest changed. The sampler's steps are
the same for every family and each family's model call is its own, so the families
running every sampler share them out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import torch

from conftest import SAMPLERS, halves, ramp_image

from kdiff_differential import load_pipeline
from kdiff_differential.core.samplers import OWN_STEPS
from kdiff_differential.core.sampling import differential_edit


@dataclass(frozen=True)
class Family:
    folder: str  # a tiny_family name
    size: tuple[int, int]  # the image's, in pixels
    samplers: tuple[str, ...]
    steps: int
    schedule: str  # "karras" (the UNets' default) or "model"
    args: Callable[..., dict]  # (pipe, image) -> the extra arguments
    changes_by: float = 0.05  # the changed half's mean change, at least
    decodes: bool = False  # the result decodes to the image's size


def share(family: int, of: int) -> tuple[str, ...]:
    """The ``family``-th of ``of`` families' share of every sampler."""
    return tuple(SAMPLERS[family::of])


def unet(folder: str) -> Family:
    """An SDXL or inpainting folder: three samplers, Karras, the inpainting channels from the half map."""
    return Family(
        folder, (24, 32), ("euler_ancestral", "dpmpp_2m", "heun"), 3, "karras", decodes=True,
        args=lambda pipe, image: pipe.extra_args("a cat", "blurry", 4.0, image=image, change_map=halves(*image.shape[:2])),
    )


def fill_kontext_chroma(pipe, image: np.ndarray) -> dict:
    """FLUX.1 Fill with the released mask."""
    options = {"inpaint_mask": "released"} if pipe.inpainting else {}
    return pipe.extra_args("a cat", "", 1.0 if pipe.family.guided else None, image=image, change_map=halves(*image.shape[:2]), **options)


def newer(folder: str, family: int, of: int, args: Callable[..., dict]) -> Family:
    """A newer flow family: 2 steps of its share of the samplers, on its own schedule."""
    return Family(folder, (32, 36), share(family, of), 2, "model", args)


FAMILIES = {
    "sd-eps": Family("sd-eps", (32, 36), ("euler_ancestral",), 3, "karras", lambda pipe, image: pipe.extra_args("a cat", "", 3.0), 0.1),
    "sd-v": Family("sd-v", (32, 36), ("euler_ancestral",), 3, "karras", lambda pipe, image: pipe.extra_args("a cat", "", 3.0), 0.1),
    **{name: unet(name) for name in ("sdxl-eps", "sdxl-v", "sdxl-inpaint", "sd-inpaint", "sdxl-refiner")},
    **{name: Family(name, (32, 36), tuple(SAMPLERS), 3, "model", lambda pipe, image: pipe.extra_args("a cat", "blurry", 3.0), 0.1)
       for name in ("sd3", "flux")},
    **{name: newer(name, i, 3, fill_kontext_chroma) for i, name in enumerate(("flux-fill", "kontext", "chroma"))},
    **{name: newer(name, i, 2, lambda pipe, image: pipe.extra_args("a cat", "")) for i, name in enumerate(("zimage-turbo", "klein"))},
    # The prompt alone (the guided call is checked in test_family_parity.py; with it,
    # dpm_adaptive takes ten times the steps on these random weights).
    **{name: newer(name, i, 2, lambda pipe, image: pipe.extra_args("a cat", "", 1.0, image=image)) for i, name in enumerate(("qwen", "qwen-edit"))},
}
CASES = [(name, sampler) for name, family in FAMILIES.items() for sampler in family.samplers]


@pytest.fixture(scope="module")
def loaded(tiny_family):
    """``loaded(name)``: the family's pipeline, its image and the image's latent, loaded once for the module."""
    cache: dict = {}

    def load(name: str):
        if name not in cache:
            pipe = load_pipeline(tiny_family(FAMILIES[name].folder))
            image = ramp_image(*FAMILIES[name].size)
            cache[name] = pipe, image, pipe.encode(image)
        return cache[name]

    return load


@pytest.mark.parametrize("name, sampler", CASES)
def test_every_sampler_keeps_kept_pixels_and_changes_the_rest(name: str, sampler: str, loaded) -> None:
    family = FAMILIES[name]
    pipe, image, latent = loaded(name)
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, halves(*latent.shape[-2:]), sampler=sampler,
        steps=None if sampler in OWN_STEPS else family.steps, schedule=family.schedule, extra_args=family.args(pipe, image),
    )
    half = latent.shape[-1] // 2
    assert torch.isfinite(edit.result).all()
    # Kept to float rounding: the samplers' last step computes x + (denoised - x).
    torch.testing.assert_close(edit.result[..., :half], latent[..., :half], atol=1e-5, rtol=0)
    assert (edit.result[..., half:] - latent[..., half:]).abs().mean() > family.changes_by
    if family.decodes:
        assert pipe.decode(edit.result).shape == (1, 3, *family.size)


def test_the_readme_base_then_refiner_recipe_keeps_kept_pixels(tiny_family) -> None:
    """The README's split: SDXL base for the first steps, the refiner for the rest, one
    schedule, map and noise. Kept pixels end exact; the refiner's steps change the rest."""
    import k_diffusion as K

    from kdiff_differential import DifferentialDenoiser
    from kdiff_differential.core.schedules import make_sigmas

    base = load_pipeline(tiny_family("sdxl-eps"))
    refiner = load_pipeline(tiny_family("sdxl-refiner"))
    image = ramp_image(24, 32)
    latent = base.encode(image)
    change = halves(*latent.shape[-2:])
    sigmas = make_sigmas(base.denoiser_for(latent), 5)
    split = 3
    first = DifferentialDenoiser(base.denoiser_for(latent), latent, change, sigmas=sigmas,
                                 generator=torch.Generator().manual_seed(0))
    x = K.sampling.sample_dpmpp_2m(first, first.noisy_latent(), first.sigmas[: split + 1],
                                   extra_args=base.extra_args("a red cat", "blurry", image=image), disable=True)
    second = DifferentialDenoiser(refiner.denoiser_for(latent), latent, change, sigmas=sigmas, noise=first.noise)
    refined = K.sampling.sample_dpmpp_2m(second, x, second.sigmas[split:],
                                         extra_args=refiner.extra_args("a red cat", "blurry", image=image), disable=True)
    base_only = K.sampling.sample_dpmpp_2m(first, x, first.sigmas[split:],
                                           extra_args=base.extra_args("a red cat", "blurry", image=image), disable=True)
    half = latent.shape[-1] // 2
    torch.testing.assert_close(refined[..., :half], latent[..., :half], atol=1e-5, rtol=0)
    assert (refined[..., half:] - base_only[..., half:]).abs().mean() > 1e-3
    assert refiner.decode(refined).shape == (1, 3, 24, 32)
