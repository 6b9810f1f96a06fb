"""Any supported diffusers pipeline folder, run through k-diffusion: ONE code path.

"Load a folder, encode, denoise, decode" lives here once; what differs between model
families (text encoders, the conditioning the network takes, how it becomes a
k-diffusion denoiser) lives in a small :class:`~kdiff_differential.models.families.Family`
adapter, picked from ``model_index.json``: Stable Diffusion 1.x/2.x and SDXL (UNets,
and their inpainting checkpoints: see :meth:`DiffusersPipeline.extra_args`), SD3/SD3.5
and Flux.1 (flow-matching transformers). Needs the ``diffusers`` extra; diffusers and
transformers are imported inside the functions, after :func:`require_diffusers`.
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..images import to_image, to_tensor
from .families import detect, load_component, read_config

INSTALL = "pip install 'kdiff-differential[diffusers]'"


def require_diffusers() -> None:
    """InputError naming the extra to install when diffusers or transformers is missing."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise InputError(f"a diffusers model folder needs diffusers and transformers ({error}); install them: {INSTALL}") from None


def quiet_loading() -> None:
    """Silence diffusers' and transformers' loading bars, config advice and logged errors
    (which we raise as InputError), as they would bury a command line's own output.
    They are global settings: for programs, not libraries."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity(logging.CRITICAL)
        library.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")


def change_mask(change_map: Any, size: tuple[int, int], device: torch.device) -> Tensor:
    """The change map binarised at 0.5 (1 = change) at ``size``: (1, 1, *size) float32.
    The map is resized bilinearly first, then rounded, as ComfyUI's InpaintModelConditioning."""
    from ..maps import _as_strength, _to_tensor

    strength = _as_strength(_to_tensor(change_map), torch.float32).to(device)
    while strength.dim() < 4:
        strength = strength.unsqueeze(0)
    strength = F.interpolate(strength[:1, :1], size=size, mode="bilinear", align_corners=False)
    return (strength >= 0.5).float()


class DiffusersPipeline:
    """A local diffusers folder as what a k-diffusion user needs.

    ``family`` is the detected :class:`~kdiff_differential.models.families.Family`
    adapter, ``inpainting`` whether the UNet takes the inpainting channels, ``schedule``
    the family's default noise schedule (``karras``; SD3/Flux: ``model``, their own from
    t = 1). :meth:`denoiser_for` gives the network (with classifier-free guidance where
    the family uses it) as a k-diffusion denoiser for a latent, called as
    ``denoiser(x, sigma, **extra_args(...))``; ``denoiser`` is the one for the native
    size (only Flux's schedule depends on the size). :meth:`encode` and :meth:`decode`
    are the latent codec (``(z - shift_factor) * scaling_factor`` of the VAE's config,
    float32). Weights are fp16 on CUDA (bf16 for flow transformers) and fp32 on CPU;
    the VAE stays fp32 where its config asks (``force_upcast``); latents and the sampler
    stay fp32.
    """

    def __init__(self, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> None:
        require_diffusers()
        root = Path(path)
        self.device = _device(device)
        self.family = detect(root)
        dtype = self.family.cuda_dtype if self.device.type == "cuda" else torch.float32
        vae_dtype = torch.float32 if read_config(root, "vae").get("force_upcast", False) else dtype
        self.vae = load_component(root, self.family.index, "vae", vae_dtype).to(self.device).eval().requires_grad_(False)
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.network = self.family.load(dtype, self.device)
        kind = self.family.kind(self.vae.config.latent_channels)
        self.inpainting = kind == "inpainting"
        self.schedule = self.family.schedule
        self.scheduler = read_config(root, "scheduler", "scheduler_config.json")
        self._denoisers: dict[tuple[int, int], nn.Module] = {}
        native = self.family.native_size // self.factor
        self.denoiser = self.denoiser_for((native, native))
        self.description = f"{self.family.name}, {kind}, {self.family.prediction(self.scheduler)}"

    def denoiser_for(self, latent: Union[Tensor, tuple[int, int]]) -> nn.Module:
        """The k-diffusion denoiser for ``latent`` (1, C, h, w), or its size (h, w)."""
        from ..guidance import CFGDenoiser

        size = _latent_size(latent, self.family.patch)
        if size not in self._denoisers:
            inner = self.family.denoiser(self.network, self.scheduler, size)
            self._denoisers[size] = (CFGDenoiser(inner) if self.family.guided else inner).to(self.device)
        return self._denoisers[size]

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The nearest size (h, w) in pixels whose latent the network takes (the VAE's
        factor times the transformer's patch divides it)."""
        step = self.factor * self.family.patch
        return tuple(max(step, round(side / step) * step) for side in (height, width))  # type: ignore[return-value]

    def encode(self, image: Union[np.ndarray, Tensor]) -> Tensor:
        """uint8 (H, W, 3) or pixels (1, 3, H, W) in [-1, 1] -> the scaled latent
        (1, C, h/f, w/f), float32; the image is resized to :meth:`size` first."""
        pixels = _pixels(image).to(self.device)
        target = self.size(*pixels.shape[-2:])
        if target != tuple(pixels.shape[-2:]):
            pixels = F.interpolate(pixels, size=target, mode="bicubic", align_corners=False, antialias=True)
        with torch.no_grad():
            latent = self.vae.encode(pixels.clamp(-1, 1).to(self.vae.dtype)).latent_dist.mode().float()
        config = self.vae.config
        return (latent - (config.get("shift_factor") or 0)) * config.scaling_factor

    def decode(self, latent: Tensor) -> Tensor:
        """A latent (1, C, h, w) -> pixels (1, 3, h*f, w*f) in [-1, 1], float32."""
        config = self.vae.config
        z = latent / config.scaling_factor + (config.get("shift_factor") or 0)
        with torch.no_grad():
            pixels = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        return pixels.clamp(-1, 1)

    def extra_args(
        self, prompt: str, negative: str = "", cfg: Optional[float] = None, *,
        image: Optional[Union[np.ndarray, Tensor]] = None, change_map: Any = None,
        size: Optional[tuple[int, int]] = None,
    ) -> dict[str, Any]:
        """What the denoiser takes at every call: ``cond`` (a dict of tensors, batch 1)
        and, for guided families, ``uncond`` and ``cfg_scale``. Flux.1 dev takes ``cfg``
        as its guidance input instead (one pass, ``negative`` unused; schnell ignores it).
        ``cfg`` defaults to the family's ``default_cfg`` (7; Flux.1: 3.5).

        ``size`` (H, W) in pixels is the output size SDXL is told (default: ``image``'s,
        else the native size). An inpainting UNet also needs ``image`` (uint8
        (H, W, 3) or (1, 3, H, W) in [-1, 1]) and ``change_map`` (1 = change): its extra
        channels are the map binarised at 0.5 at latent size and the latent of the image
        with the pixels to change set to mid-grey, fixed for the whole run (ComfyUI's
        InpaintModelConditioning); the wrapper still releases pixels by the full map.
        """
        for name, text in (("prompt", prompt), ("negative", negative)):
            if not isinstance(text, str):
                raise TypeError(f"{name} must be a str, got {type(text).__name__}")
        cfg = self.family.default_cfg if cfg is None else cfg
        if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
            raise TypeError(f"cfg must be a finite number, got {cfg!r}")
        pixels = None if image is None else _pixels(image).to(self.device)
        if size is None:
            size = self.size(*pixels.shape[-2:]) if pixels is not None else (self.family.native_size,) * 2
        cond, uncond = self.family.embed(prompt, negative, size)
        if self.inpainting:
            if pixels is None or change_map is None:
                raise ValueError("an inpainting model needs image= and change_map= in extra_args")
            mask = change_mask(change_map, tuple(pixels.shape[-2:]), self.device)
            masked = self.encode(pixels * (1 - mask))  # 0 in [-1, 1] is mid-grey
            concat = torch.cat([F.interpolate(mask, size=masked.shape[-2:], mode="bilinear", align_corners=False).round(), masked], dim=1)
            cond, uncond = {**cond, "concat": concat}, {**uncond, "concat": concat}
        return self.family.extra_args(cond, uncond, cfg)


def _device(device: Union[str, torch.device]) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") from None


def _pixels(image: Union[np.ndarray, Tensor]) -> Tensor:
    """An image as pixels (1, 3, H, W) in [-1, 1]: from uint8 (H, W, 3), or as given."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
        return to_tensor(image)
    if isinstance(image, Tensor):
        if image.ndim != 4 or image.shape[:2] != (1, 3):
            raise ValueError(f"image must be pixels (1, 3, H, W) in [-1, 1], got shape {tuple(image.shape)}")
        return image
    raise TypeError(f"image must be a uint8 numpy array (H, W, 3) or a tensor (1, 3, H, W), got {type(image).__name__}")


def _latent_size(latent: Union[Tensor, tuple[int, int]], patch: int) -> tuple[int, int]:
    """(h, w) of a latent (B, C, h, w) or of a size; both multiples of the network's ``patch``."""
    if isinstance(latent, Tensor):
        if latent.ndim != 4:
            raise ValueError(f"latent must be (B, C, h, w), got shape {tuple(latent.shape)}")
        size = tuple(latent.shape[-2:])
    elif isinstance(latent, (tuple, list)) and len(latent) == 2 and all(isinstance(side, int) for side in latent):
        size = tuple(latent)
    else:
        raise TypeError(f"latent must be a tensor (B, C, h, w) or a size (h, w), got {latent!r}")
    if any(side < patch or side % patch for side in size):
        raise ValueError(f"the latent's sides must be positive multiples of {patch} for this model, got {size}")
    return size  # type: ignore[return-value]


class FittedModel:
    """A :class:`DiffusersPipeline` fitted to one input image: the command line's
    :class:`~kdiff_differential.models.ImageModel`.

    ``latent`` is the image's latent (1, C, H/f, W/f), ``denoiser`` the pipeline's
    denoiser for it, ``schedule`` the family's default; ``decode`` brings a result latent
    back to a uint8 image (H, W, 3) of the input's size.
    """

    def __init__(self, pipeline: DiffusersPipeline, image: np.ndarray) -> None:
        self.pipeline = pipeline
        self.image = image
        self.description = pipeline.description
        self.schedule = pipeline.schedule
        self.latent = pipeline.encode(image)
        self.denoiser = pipeline.denoiser_for(self.latent)

    def extra_args(self, prompt: str, negative: str, cfg: Optional[float] = None, change_map: Any = None) -> dict[str, Any]:
        return self.pipeline.extra_args(prompt, negative, cfg, image=self.image, change_map=change_map)

    def decode(self, latent: Tensor) -> np.ndarray:
        pixels = self.pipeline.decode(latent)
        size = tuple(self.image.shape[:2])
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        return to_image(pixels.clamp(-1, 1))
