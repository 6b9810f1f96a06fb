"""Classifier-free guidance around a k-diffusion denoiser."""

from __future__ import annotations

from typing import Any, Union

import torch
from torch import Tensor, nn

Condition = Union[Tensor, dict[str, Tensor]]


def _batch(first: Condition, second: Condition) -> Condition:
    """Two conditions as one batch: tensors concatenated, dicts key by key."""
    if isinstance(first, dict) and isinstance(second, dict):
        if first.keys() != second.keys():
            raise ValueError(f"cond and uncond must have the same keys, got {sorted(second)} and {sorted(first)}")
        return {key: torch.cat([first[key], second[key]]) for key in first}
    if isinstance(first, dict) or isinstance(second, dict):
        raise TypeError("cond and uncond must both be tensors or both dicts")
    return torch.cat([first, second])


class CFGDenoiser(nn.Module):
    """``uncond + cfg_scale * (cond - uncond)``, both from one batched model call.

    Call it as ``(x, sigma, cond=..., uncond=..., cfg_scale=...)``: ``x`` (B, C, H, W),
    ``sigma`` (B,), ``cond`` and ``uncond`` the text embeddings (B, T, D), or dicts of
    such tensors (SDXL's added conditions, inpainting channels), batched key by key. At
    ``cfg_scale`` 1 the unconditional half is skipped. The model is kept as
    ``inner_model``, k-diffusion's convention, so that :class:`DifferentialDenoiser`
    finds its ``sigma_to_t`` (the timestep clock) through this wrapper.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.inner_model = model

    def forward(self, x: Tensor, sigma: Tensor, *, cond: Condition, uncond: Condition, cfg_scale: float, **kwargs: Any) -> Tensor:
        if cfg_scale == 1:
            return self.inner_model(x, sigma, cond=cond, **kwargs)
        both = self.inner_model(
            torch.cat([x, x]), torch.cat([sigma, sigma]), cond=_batch(uncond, cond), **kwargs
        )
        uncond_out, cond_out = both.chunk(2)
        return uncond_out + (cond_out - uncond_out) * cfg_scale
