"""Models built for the tests: the closed-form denoiser and tiny random networks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdiff_differential.edit import RANGE_SAMPLERS
from kdiff_differential.edit import SAMPLERS as ALL_SAMPLERS
from kdiff_differential.models import IdealDenoiser, sd_alphas_cumprod

SIZE = 16

# Every k-diffusion sampler: those that run a schedule, and the two that take a range.
ADAPTIVE = list(RANGE_SAMPLERS)
SAMPLERS = list(ALL_SAMPLERS)
SCHEDULED = [name for name in SAMPLERS if name not in ADAPTIVE]


def smooth_images(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """n smooth random RGB images in [-1, 1], (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def ideal_denoiser(prediction: str = "eps", quantize: bool = False, spread: float = 1.0):
    """CompVisDenoiser (or CompVisVDenoiser) around the ideal denoiser of 8 smooth images.

    A spread as wide as the images' range keeps the posterior from collapsing onto one
    image early, so how much a pixel changes keeps growing with how early it is released.
    """
    from k_diffusion import external

    model = IdealDenoiser(smooth_images(8, seed=1), prediction=prediction, spread=spread)
    wrapper = external.CompVisDenoiser if prediction == "eps" else external.CompVisVDenoiser
    return wrapper(model, quantize=quantize)


class TinyCompVisNet(nn.Module):
    """A few-thousand-parameter conv net behind the CompVis interface (eps or v output)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())
        self.body = nn.Sequential(nn.Conv2d(4, 24, 3, padding=1), nn.SiLU(), nn.Conv2d(24, 3, 3, padding=1))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        time = (t.float() / 1000).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return self.body(torch.cat([x, time], dim=1))


class TinyEDMNet(nn.Module):
    """A tiny conv net taking raw sigma, for k_diffusion.layers.Denoiser (no sigma_to_t)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(4, 24, 3, padding=1), nn.SiLU(), nn.Conv2d(24, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = sigma.log().reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:]) / 4
        return self.body(torch.cat([x, level], dim=1))


class CondIdeal(nn.Module):
    """A denoiser that uses a per-image ``cond``: the ideal denoiser's output shifted by it."""

    def __init__(self, inner_model) -> None:
        super().__init__()
        self.inner_model = inner_model

    def forward(self, x, sigma, cond):
        return self.inner_model(x, sigma) + cond.reshape(-1, 1, 1, 1) * 0.01


@pytest.fixture(scope="session")
def ideal():
    return ideal_denoiser()


@pytest.fixture(scope="session")
def latent():
    return smooth_images(1, seed=2)


@pytest.fixture(scope="session")
def gradient_map():
    """Strength rising left to right, 0 in the first column, 1 in the last."""
    return torch.linspace(0, 1, SIZE).expand(SIZE, SIZE).clone()
