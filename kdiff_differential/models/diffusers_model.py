"""Any diffusers UNet pipeline folder, run through k-diffusion: ONE code path.

"Load a folder, encode, denoise, decode" lives here once; what differs between model
families (text encoders, the conditioning the UNet takes) lives in a small
:class:`~kdiff_differential.models.families.Family` adapter, picked from
``model_index.json``. Inpainting checkpoints (UNet ``in_channels`` = 2 x latent + 1) are
a variant of any UNet family: see :meth:`DiffusersPipeline.extra_args`.

:class:`DiffusersUNet` puts a diffusers UNet behind the CompVis model interface
(``alphas_cumprod``, ``apply_model(x, t, cond)``), so that k-diffusion's
``CompVisDenoiser`` (epsilon) or ``CompVisVDenoiser`` (v-prediction) wrap it like a
CompVis ``LatentDiffusion``. Needs the ``diffusers`` extra; diffusers and transformers
are imported inside the functions, after :func:`require_diffusers`.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..images import to_image, to_tensor
from .families import detect, load_part, read_config

# The scheduler config's prediction_type -> the k-diffusion wrapper's name.
PREDICTIONS = {"epsilon": "CompVisDenoiser", "v_prediction": "CompVisVDenoiser"}
INSTALL = "pip install 'kdiff-differential[diffusers]'"
# Condition keys that go to the UNet's added_cond_kwargs (SDXL's micro-conditioning).
ADDED_CONDITIONS = ("text_embeds", "time_ids")
Condition = Union[Tensor, dict[str, Tensor]]


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` with the CompVis model interface.

    ``alphas_cumprod`` (T,) is the training schedule (the scheduler's). ``apply_model``
    takes the VP-scaled latent x (N, C, h, w), the timestep t (N,) (k-diffusion gives
    fractional ones) and ``cond``: the text embedding (N, T, D), or a dict of tensors
    with batch N: ``crossattn`` (N, T, D), optionally ``text_embeds`` and ``time_ids``
    (SDXL's added conditions) and ``concat`` (N, C', h, w), channels appended to x
    (inpainting UNets). It returns the UNet's prediction (eps or v) in x's dtype. The
    UNet may run in another dtype (fp16 on CUDA); the sampler's arithmetic stays in x's.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float())

    def apply_model(self, x: Tensor, t: Tensor, cond: Condition, **kwargs: Any) -> Tensor:
        dtype = self.unet.dtype
        parts = cond if isinstance(cond, dict) else {"crossattn": cond}
        sample = x if "concat" not in parts else torch.cat([x, parts["concat"].to(x.dtype)], dim=1)
        added = {key: parts[key].to(dtype) for key in ADDED_CONDITIONS if key in parts}
        out = self.unet(
            sample.to(dtype), t, encoder_hidden_states=parts["crossattn"].to(dtype),
            added_cond_kwargs=added or None, **kwargs,
        ).sample
        return out.to(x.dtype)


def compvis_denoiser(unet: nn.Module, scheduler_config: dict[str, Any]) -> nn.Module:
    """A k-diffusion denoiser (x, sigma, cond=...) -> x0 for a diffusers UNet.

    ``scheduler_config`` is the scheduler's config (``scheduler/scheduler_config.json``):
    its betas give ``alphas_cumprod`` and its ``prediction_type`` picks
    ``CompVisDenoiser`` ("epsilon") or ``CompVisVDenoiser`` ("v_prediction").
    """
    import k_diffusion as K
    from diffusers import DDPMScheduler

    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise InputError(
            f"the scheduler's prediction_type is {prediction!r}; supported: {', '.join(PREDICTIONS)}"
        )
    # DDPMScheduler reads every beta schedule diffusers knows (and trained_betas) the same way.
    betas = {key: scheduler_config[key] for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas") if key in scheduler_config}
    alphas_cumprod = DDPMScheduler(**betas).alphas_cumprod
    wrap = getattr(K.external, PREDICTIONS[prediction])
    return wrap(DiffusersUNet(unet, alphas_cumprod))


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

    ``family`` is the detected :class:`Family` adapter, ``inpainting`` whether the UNet
    takes the inpainting channels, ``denoiser`` the UNet with classifier-free guidance as
    a k-diffusion denoiser, called as ``denoiser(x, sigma, **extra_args(...))``.
    :meth:`encode` and :meth:`decode` are the latent codec (latents times the VAE's
    scaling factor, float32). Weights are fp16 on CUDA and fp32 on CPU; the VAE stays
    fp32 where its config asks (``force_upcast``); latents and the sampler stay fp32.
    """

    def __init__(self, path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> None:
        require_diffusers()
        from diffusers import AutoencoderKL

        from ..guidance import CFGDenoiser

        root = Path(path)
        self.device = torch.device(device)
        self.family = detect(root)
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        vae_dtype = torch.float32 if read_config(root, "vae").get("force_upcast", False) else dtype
        self.vae = load_part(root, "vae", lambda: AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True, torch_dtype=vae_dtype))
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        unet = self.family.load(root, dtype, self.device)
        channels, latent = unet.config.in_channels, self.vae.config.latent_channels
        self.inpainting = channels == 2 * latent + 1
        if channels not in (latent, 2 * latent + 1):
            raise InputError(
                f"--model {root}: the UNet takes {channels} channels and the VAE gives {latent}; "
                f"supported: {latent} (text-to-image) or {2 * latent + 1} (inpainting)"
            )
        self.vae.to(self.device).eval().requires_grad_(False)
        scheduler = read_config(root, "scheduler", "scheduler_config.json")
        self.denoiser = CFGDenoiser(compvis_denoiser(unet, scheduler)).to(self.device)
        kind = "inpainting" if self.inpainting else "text-to-image"
        self.description = f"{self.family.name}, {kind}, {scheduler.get('prediction_type', 'epsilon')} prediction"

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The nearest size (h, w) in pixels that the VAE's factor divides."""
        return tuple(max(self.factor, round(side / self.factor) * self.factor) for side in (height, width))  # type: ignore[return-value]

    def encode(self, image: Union[np.ndarray, Tensor]) -> Tensor:
        """uint8 (H, W, 3) or pixels (1, 3, H, W) in [-1, 1] -> the scaled latent
        (1, C, h/f, w/f), float32; the image is resized to :meth:`size` first."""
        pixels = to_tensor(image) if isinstance(image, np.ndarray) else image
        pixels = pixels.to(self.device)
        target = self.size(*pixels.shape[-2:])
        if target != tuple(pixels.shape[-2:]):
            pixels = F.interpolate(pixels, size=target, mode="bicubic", align_corners=False, antialias=True)
        with torch.no_grad():
            latent = self.vae.encode(pixels.clamp(-1, 1).to(self.vae.dtype)).latent_dist.mode()
        return latent.float() * self.vae.config.scaling_factor

    def decode(self, latent: Tensor) -> Tensor:
        """A latent (1, C, h, w) -> pixels (1, 3, h*f, w*f) in [-1, 1], float32."""
        with torch.no_grad():
            pixels = self.vae.decode((latent / self.vae.config.scaling_factor).to(self.vae.dtype)).sample.float()
        return pixels.clamp(-1, 1)

    def extra_args(
        self, prompt: str, negative: str = "", cfg: float = 7.0, *,
        image: Optional[Union[np.ndarray, Tensor]] = None, change_map: Any = None,
        size: Optional[tuple[int, int]] = None,
    ) -> dict[str, Any]:
        """What the denoiser takes at every call: ``cond``, ``uncond`` (dicts of tensors,
        batch 1) and ``cfg_scale``.

        ``size`` (H, W) in pixels is the output size SDXL is told (default: ``image``'s,
        else the UNet's native size). An inpainting UNet also needs ``image`` (uint8
        (H, W, 3) or (1, 3, H, W) in [-1, 1]) and ``change_map`` (1 = change): its extra
        channels are the map binarised at 0.5 at latent size and the latent of the image
        with the pixels to change set to mid-grey, fixed for the whole run (ComfyUI's
        InpaintModelConditioning); the wrapper still releases pixels by the full map.
        """
        pixels = None if image is None else (to_tensor(image) if isinstance(image, np.ndarray) else image).to(self.device)
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
        return {"cond": cond, "uncond": uncond, "cfg_scale": cfg}


class FittedModel:
    """A :class:`DiffusersPipeline` fitted to one input image: the command line's
    :class:`~kdiff_differential.models.ImageModel`.

    ``latent`` is the image's latent (1, C, H/f, W/f); ``decode`` brings a result latent
    back to a uint8 image (H, W, 3) of the input's size.
    """

    def __init__(self, pipeline: DiffusersPipeline, image: np.ndarray) -> None:
        self.pipeline = pipeline
        self.image = image
        self.description = pipeline.description
        self.denoiser = pipeline.denoiser
        self.latent = pipeline.encode(image)

    def extra_args(self, prompt: str, negative: str, cfg: float, change_map: Any = None) -> dict[str, Any]:
        return self.pipeline.extra_args(prompt, negative, cfg, image=self.image, change_map=change_map)

    def decode(self, latent: Tensor) -> np.ndarray:
        pixels = self.pipeline.decode(latent)
        size = tuple(self.image.shape[:2])
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)
        return to_image(pixels.clamp(-1, 1))
