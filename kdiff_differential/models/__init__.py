"""Models to wrap: the built-in closed-form denoiser and, with the ``diffusers`` extra,
Stable Diffusion. Each, fitted to one input image, is an :class:`ImageModel`."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from .flow import FlowDenoiser, start_from_noise
from .ideal import IdealDenoiser, sd_alphas_cumprod


class ImageModel(Protocol):
    """A model fitted to one input image, as the command line uses it.

    ``latent`` is the image in the model's space (1, C, h, w); ``denoiser`` a k-diffusion
    denoiser for such latents; ``extra_args`` what it takes at every call;
    ``decode`` brings a result latent back to an image of the input's size. A model
    may name its default noise ``schedule`` (flow models: 'model', from t = 1).
    """

    latent: Tensor
    denoiser: nn.Module

    def extra_args(self, prompt: str, negative: str, cfg: float) -> dict[str, Any]: ...

    def decode(self, latent: Tensor) -> np.ndarray: ...


def load_model(name: str, image: np.ndarray, device: torch.device = torch.device("cpu")) -> ImageModel:
    """``name`` ('builtin', or a local diffusers Stable Diffusion 1.x/2.x, SD3/SD3.5 or
    Flux.1 directory) fitted to ``image``, uint8 (H, W, 3). A bad directory is an
    InputError that says why."""
    if name == "builtin":
        from .builtin import BuiltinModel

        return BuiltinModel(image, device)
    from .diffusers_flow import FlowModel, flow_family
    from .diffusers_sd import StableDiffusionModel, quiet_loading

    quiet_loading()
    if flow_family(name) is not None:
        return FlowModel(name, image, device)
    return StableDiffusionModel(name, image, device)


__all__ = ["FlowDenoiser", "IdealDenoiser", "ImageModel", "load_model", "sd_alphas_cumprod", "start_from_noise"]
