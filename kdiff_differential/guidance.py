"""Classifier-free guidance around a k-diffusion denoiser."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class CFGDenoiser(nn.Module):
    """``uncond + cfg_scale * (cond - uncond)``, both from one batched model call.

    Call it as ``(x, sigma, cond=..., uncond=..., cfg_scale=...)``: ``x`` (B, C, H, W),
    ``sigma`` (B,), ``cond`` and ``uncond`` the text embeddings (B, T, D), or dicts of
    such tensors (a model with several text inputs, as SD3's pooled projections). At
    ``cfg_scale`` 1 the unconditional half is skipped. The model is kept as
    ``inner_model``, k-diffusion's convention, so that :class:`DifferentialDenoiser`
    finds its ``sigma_to_t`` (the timestep clock) through this wrapper.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner_model = model

    def forward(self, x: Tensor, sigma: Tensor, *, cond: Tensor, uncond: Tensor, cfg_scale: float, **kwargs: Any) -> Tensor:
        if cfg_scale == 1:
            return self.inner_model(x, sigma, cond=cond, **kwargs)
        both = self.inner_model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=_stack(uncond, cond), **kwargs)
        uncond_out, cond_out = both.chunk(2)
        return uncond_out + (cond_out - uncond_out) * cfg_scale


def _stack(uncond: Any, cond: Any) -> Any:
    if isinstance(cond, dict):
        return {key: torch.cat([uncond[key], value]) for key, value in cond.items()}
    return torch.cat([uncond, cond])
