"""ComfyUI's Differential Diffusion, written the obvious way: the baseline to compare with.

This restates the behaviour of ComfyUI's ``DifferentialDiffusion`` node together with
its inpainting wrapper ``KSamplerX0Inpaint`` (ComfyUI a125cd84, 2025-10-11): at every
call it converts three sigmas to timesteps, thresholds the map, and blends before and
after the model. ``samplers/overhead.py`` measures it as the cost to beat, and CI's
parity tests check ``DifferentialDenoiser(compat="comfyui")`` against it.
``tests/test_comfyui_source.py`` checks both against ComfyUI's own code where that
source is at hand (``KDIFF_COMFYUI_SRC``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from kdiff_differential.core.clocks import inner_models


class ComfyUIReference:
    """``inner``: a k-diffusion denoiser; ``latent`` (B, C, H, W); ``change_map`` already at
    latent size, (1|B, 1, H, W) float, 1 = change; ``sigmas``: the full schedule;
    ``noise``: latent-shaped. For dpm_fast/dpm_adaptive too, ``sigmas`` is the full
    schedule: ComfyUI converts it to their range but hands the node all of it. ``x`` may
    carry k * B images (guidance outside)."""

    def __init__(self, inner: Callable[..., Tensor], latent: Tensor, change_map: Tensor, sigmas: Tensor,
                 noise: Tensor, strength: float = 1.0) -> None:
        self.inner, self.latent, self.change_map = inner, latent, change_map
        self.sigmas, self.noise, self.strength = sigmas, noise, strength
        # ComfyUI reads the clock from the model itself (its model_sampling), whatever
        # guidance wraps it; a model without one falls back to log sigma.
        self.model = next((model for model in inner_models(inner) if hasattr(model, "sigma_to_t")), None)
        self.timestep = torch.log if self.model is None else self.model.sigma_to_t
        if hasattr(self.model, "log_sigmas"):
            self.timestep = self.nearest_timestep

    def nearest_timestep(self, sigma: Tensor) -> Tensor:
        """ComfyUI's ``ModelSamplingDiscrete.timestep``: the nearest training level in
        log sigma, an integer, whatever the k-diffusion wrapper's ``quantize``."""
        dists = sigma.log() - self.model.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape)

    def denoise_mask(self, sigma: Tensor) -> Tensor:
        """ComfyUI's node: the release threshold from this call's timestep."""
        sigma_min = getattr(self.model, "sigma_min", None)
        sigma_to = self.sigmas[-1] if sigma_min is None else torch.as_tensor(sigma_min)
        if self.sigmas[-1] > sigma_to:
            sigma_to = self.sigmas[-1]
        sigma_from = self.sigmas[0]
        ts_from = self.timestep(sigma_from)
        ts_to = self.timestep(sigma_to)
        current_ts = self.timestep(sigma[0])
        threshold = (current_ts - ts_to) / (ts_from - ts_to)
        binary = (self.change_map >= threshold).to(self.change_map.dtype)
        if self.strength and self.strength < 1:
            return self.strength * binary + (1 - self.strength) * self.change_map
        return binary

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        """ComfyUI's ``KSamplerX0Inpaint``: blend the input, denoise, blend the output."""
        repeats = x.shape[0] // self.latent.shape[0]
        latent = self.latent.repeat(repeats, 1, 1, 1)
        noise = self.noise.repeat(repeats, 1, 1, 1)
        mask = self.denoise_mask(sigma).expand(self.latent.shape[0], -1, -1, -1).repeat(repeats, 1, 1, 1)
        latent_mask = 1.0 - mask
        x = x * mask + (latent + noise * sigma.reshape(-1, 1, 1, 1)) * latent_mask
        out = self.inner(x, sigma, **kwargs)
        return out * mask + latent * latent_mask
