"""Models to wrap: the built-in closed-form denoiser and, with the ``diffusers`` extra,
diffusers models of the families in :data:`.families.FAMILIES` (Stable Diffusion
1.x/2.x, SDXL, their inpainting checkpoints, the SDXL refiner, SD3/SD3.5, Flux.1), from a
folder, a Hub id or a single checkpoint file, with LoRAs and ControlNets. Each, fitted to one input
image, is an :class:`ImageModel`. Importing this package imports neither torch nor
diffusers (so that ``--help`` can list the families): they load when used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence, Union

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn

    from .controlnets import Control
    from .diffusers_model import DiffusersPipeline
    from .flow import FlowDenoiser, start_from_noise
    from .ideal import IdealDenoiser, sd_alphas_cumprod

# Torch-heavy names this package re-exports, loaded on first use.
_LAZY = {"Control": ".controlnets", "FlowDenoiser": ".flow", "start_from_noise": ".flow", "IdealDenoiser": ".ideal", "sd_alphas_cumprod": ".ideal"}
Loras = Sequence[tuple[Union[str, Path], float]]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ImageModel(Protocol):
    """A model fitted to one input image, as the command line uses it.

    ``latent`` is the image in the model's space (1, C, h, w); ``denoiser`` a k-diffusion
    denoiser for such latents; ``extra_args`` what it takes at every call (``cfg`` None:
    the model's default; an inpainting model also needs the ``change_map``, 1 = change;
    a diffusers model with ControlNets takes ``controls=`` and ``sigmas=`` too);
    ``decode`` brings a result latent back to an image of the input's size.
    ``schedule`` is the model's default noise schedule ('karras'; flow models: 'model',
    from t = 1) and ``description`` what was detected, for the user ('' when there is
    nothing to say).
    """

    latent: "Tensor"
    denoiser: "nn.Module"
    schedule: str
    description: str

    def extra_args(self, prompt: str, negative: str, cfg: Optional[float] = None, change_map: Any = None) -> dict[str, Any]: ...

    def decode(self, latent: "Tensor") -> "np.ndarray": ...


def load_pipeline(
    path: Union[str, Path], device: Union[str, "torch.device"] = "cpu", *,
    config: Optional[Union[str, Path]] = None, loras: Loras = (), allow_pickle: bool = False,
    dtype: Optional[Union[str, "torch.dtype"]] = None, offload: bool = False, vae_tiling: bool = False,
    controlnets: Sequence[Union[str, Path]] = (),
) -> "DiffusersPipeline":
    """A diffusers model as a
    :class:`~kdiff_differential.models.diffusers_model.DiffusersPipeline`:
    ``denoiser_for(latent)``, ``encode``, ``decode``, ``extra_args``, the default
    ``schedule`` and the detected ``family``.

    ``path`` is a diffusers folder; a Hub id ``org/name[@revision]`` (from
    huggingface_hub's cache, which is all that is used with ``HF_HUB_OFFLINE=1``, else
    downloaded into it); or a single ``.safetensors`` checkpoint, whose family is read
    from its tensor names and whose configuration comes from ``config`` (a diffusers
    folder or Hub id; default: diffusers' own for that family, through the cache).
    ``loras`` are (file, scale) pairs, fused in at their scales (diffusers/peft or kohya
    layout). Pickle files (``.ckpt``, ``.pt``, ``.bin``) run code when loaded: refused
    unless ``allow_pickle``.

    Memory: ``dtype`` ('fp16', 'bf16' or 'fp32') sets the weights' (default: the family's
    on CUDA, fp32 on the CPU; a VAE whose config says ``force_upcast`` stays fp32);
    ``offload`` keeps each part on the CPU until it runs (diffusers' model CPU offload);
    ``vae_tiling`` encodes and decodes in overlapping tiles (diffusers' VAE tiling: large
    images in less memory, seams blended). ``controlnets`` are ControlNet folders or Hub
    ids, checked to fit the model; a run's images and settings for them go to
    ``extra_args(controls=[...])`` (:class:`~kdiff_differential.models.controlnets.Control`).
    Bad input, or diffusers not installed, is an InputError.
    """
    from .diffusers_model import DiffusersPipeline, require_diffusers

    require_diffusers()
    return DiffusersPipeline(
        path, device, config=config, loras=loras, allow_pickle=allow_pickle, dtype=dtype, offload=offload, vae_tiling=vae_tiling,
        controlnets=controlnets,
    )


def default_schedule(name: str, *, config: Optional[Union[str, Path]] = None, allow_pickle: bool = False) -> str:
    """The noise schedule model ``name``'s family runs by default: 'karras', or
    'model' for a flow model (its own shifted schedule from t = 1); a few-step UNet
    folder's own ('model') is known once it is loaded (``schedule`` of the loaded model). Reads
    ``model_index.json`` (of a Hub id: that file alone) or a single file's tensor names
    only; bad input is an InputError."""
    if name == "builtin":
        return "karras"
    from .diffusers_model import require_diffusers
    from .sources import resolve_source

    require_diffusers()
    return resolve_source(name, config, allow_pickle).family().default_schedule


# The last diffusers pipeline load_model(keep=True) loaded, by its source, device and options.
_KEPT: dict[str, Any] = {}


def load_model(name: str, image: "np.ndarray", device: Optional["torch.device"] = None, *, keep: bool = False,
               **options: Any) -> ImageModel:
    """``name`` ('builtin', or a diffusers model as :func:`load_pipeline` takes it, with
    its keyword ``options``: ``config``, ``loras``, ``allow_pickle``, ``dtype``,
    ``offload``, ``vae_tiling``, ``controlnets``) fitted to ``image``, uint8 (H, W, 3), on ``device``
    (default: the CPU). ``keep``: keep the loaded pipeline, one at a time, for the next
    call with the same source, device and options, which then fits it to its image
    without loading it again (the command line's folder mode). Bad input is an
    InputError that says why."""
    import torch

    device = torch.device("cpu") if device is None else device
    if name == "builtin":
        from ..errors import InputError
        from .builtin import BuiltinModel

        given = [name for name, value in options.items() if value not in (None, False, (), [])]
        if given:
            raise InputError(f"{', '.join(given)}: for diffusers models; the built-in model takes none")
        return BuiltinModel(image, device)
    from .diffusers_model import FittedModel, quiet_loading, require_diffusers

    require_diffusers()
    quiet_loading()
    if not keep:
        return FittedModel(load_pipeline(name, device, **options), image)
    key = repr((name, str(device), sorted(options.items())))
    if key not in _KEPT:
        _KEPT.clear()  # one at a time: the previous pipeline's memory goes before the next loads
        _KEPT[key] = load_pipeline(name, device, **options)
    return FittedModel(_KEPT[key], image)


__all__ = ["Control", "FlowDenoiser", "IdealDenoiser", "ImageModel", "default_schedule", "load_model", "load_pipeline", "sd_alphas_cumprod", "start_from_noise"]
