"""Models to wrap: the built-in closed-form denoiser (and, with the ``diffusers`` extra, real ones)."""

from .ideal import IdealDenoiser, sd_alphas_cumprod

__all__ = ["IdealDenoiser", "sd_alphas_cumprod"]
