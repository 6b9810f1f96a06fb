"""Models to wrap: the built-in closed-form denoiser and, with the ``diffusers`` extra,
diffusers folders (Stable Diffusion 1.x/2.x, SDXL, their inpainting checkpoints,
SD3/SD3.5, Flux.1). Each, fitted to one input image, is an :class:`ImageModel`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Union

import numpy as np
import torch
from torch import Tensor, nn

from .flow import FlowDenoiser, start_from_noise
from .ideal import IdealDenoiser, sd_alphas_cumprod

if TYPE_CHECKING:
    from .diffusers_model import DiffusersPipeline


class ImageModel(Protocol):
    """A model fitted to one input image, as the command line uses it.

    ``latent`` is the image in the model's space (1, C, h, w); ``denoiser`` a k-diffusion
    denoiser for such latents; ``extra_args`` what it takes at every call (``cfg`` None:
    the model's default; an inpainting model also needs the ``change_map``, 1 = change);
    ``decode`` brings a result latent back to an image of the input's size.
    ``schedule`` is the model's default noise schedule ('karras'; flow models: 'model',
    from t = 1) and ``description`` what was detected, for the user ('' when there is
    nothing to say).
    """

    latent: Tensor
    denoiser: nn.Module
    schedule: str
    description: str

    def extra_args(self, prompt: str, negative: str, cfg: Optional[float] = None, change_map: Any = None) -> dict[str, Any]: ...

    def decode(self, latent: Tensor) -> np.ndarray: ...


def load_pipeline(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> "DiffusersPipeline":
    """A local diffusers folder (SD 1.x/2.x, SDXL, their inpainting checkpoints, SD3/SD3.5
    or Flux.1) as a :class:`~kdiff_differential.models.diffusers_model.DiffusersPipeline`:
    ``denoiser_for(latent)``, ``encode``, ``decode``, ``extra_args``, the default
    ``schedule`` and the detected ``family``. Nothing is fetched from a hub. An
    unsupported folder, or diffusers not installed, is an InputError."""
    from .diffusers_model import DiffusersPipeline, require_diffusers

    require_diffusers()
    return DiffusersPipeline(path, device)


def default_schedule(name: str) -> str:
    """The noise schedule model ``name`` runs by default: 'karras', or 'model' for a flow
    model (its own shifted schedule from t = 1). Reads ``model_index.json`` only; a bad
    folder is an InputError."""
    if name == "builtin":
        return "karras"
    from .diffusers_model import require_diffusers
    from .families import detect

    require_diffusers()
    return detect(Path(name)).schedule


def load_model(name: str, image: np.ndarray, device: torch.device = torch.device("cpu")) -> ImageModel:
    """``name`` ('builtin', or a local diffusers folder: SD 1.x/2.x, SDXL, their inpainting
    checkpoints, SD3/SD3.5 or Flux.1) fitted to ``image``, uint8 (H, W, 3). A bad folder
    is an InputError that says why."""
    if name == "builtin":
        from .builtin import BuiltinModel

        return BuiltinModel(image, device)
    from .diffusers_model import FittedModel, quiet_loading, require_diffusers

    require_diffusers()
    quiet_loading()
    return FittedModel(load_pipeline(name, device), image)


__all__ = ["FlowDenoiser", "IdealDenoiser", "ImageModel", "default_schedule", "load_model", "load_pipeline", "sd_alphas_cumprod", "start_from_noise"]
