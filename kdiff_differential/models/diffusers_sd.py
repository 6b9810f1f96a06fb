"""Stable Diffusion 1.x/2.x from a local diffusers directory, run through k-diffusion.

:class:`DiffusersUNet` puts a diffusers UNet behind the CompVis interface
(``alphas_cumprod`` and ``apply_model(x, t, cond)``), so that k-diffusion's
``CompVisDenoiser`` (epsilon prediction) or ``CompVisVDenoiser`` (v-prediction) wrap
it like a CompVis ``LatentDiffusion``. :class:`StableDiffusionModel` loads a whole
directory (UNet, VAE, CLIP text encoder, tokenizer, scheduler config) with nothing
fetched from a hub. Needs the ``diffusers`` extra; diffusers and transformers are
imported inside the functions.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..images import to_image, to_tensor

# The scheduler config's prediction_type -> the k-diffusion wrapper's name.
PREDICTIONS = {"epsilon": "CompVisDenoiser", "v_prediction": "CompVisVDenoiser"}
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
INSTALL = "pip install 'kdiff-differential[diffusers]'"


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` with the CompVis model interface.

    ``alphas_cumprod`` (T,) is the training schedule (the scheduler's). ``apply_model``
    takes the VP-scaled latent x (N, C, h, w), the timestep t (N,) (k-diffusion gives
    fractional ones) and the text embedding ``cond`` (N, T, D), and returns the UNet's
    prediction (eps or v, as it was trained) in x's dtype. The UNet may run in another
    dtype (fp16 on CUDA); the sampler's arithmetic stays in x's.
    """

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float())

    def apply_model(self, x: Tensor, t: Tensor, cond: Tensor, **kwargs: Any) -> Tensor:
        dtype = self.unet.dtype
        out = self.unet(x.to(dtype), t, encoder_hidden_states=cond.to(dtype)).sample
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


def check_directory(path: str) -> Path:
    """``path`` as a Path when it looks like a diffusers SD 1.x/2.x directory, else InputError."""
    root = Path(path)
    if not root.exists():
        raise InputError(f"--model {path}: no such directory; give 'builtin' or a local diffusers Stable Diffusion folder")
    if not (root / "model_index.json").is_file():
        raise InputError(f"--model {path}: not a diffusers Stable Diffusion directory (no model_index.json)")
    try:
        index = json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError) as error:
        raise InputError(f"--model {path}: cannot read model_index.json ({error})") from None
    missing = [name for name in COMPONENTS if name not in index or not (root / name).is_dir()]
    if missing:
        raise InputError(f"--model {path}: not a diffusers Stable Diffusion directory (no {', '.join(missing)})")
    if "text_encoder_2" in index:
        raise InputError(f"--model {path}: a two-text-encoder model (SDXL); only Stable Diffusion 1.x/2.x are supported")
    return root


class StableDiffusionModel:
    """A local diffusers Stable Diffusion 1.x/2.x model, fitted to one input image.

    ``latent`` is the image's VAE latent (1, 4, H/8, W/8), float32, times the VAE's
    scaling factor; ``denoiser`` the UNet with classifier-free guidance, as a k-diffusion
    denoiser; ``decode`` turns a result latent back into an image of the input's size.
    Weights are fp16 on CUDA and fp32 on CPU; latents and the sampler stay in fp32.
    """

    def __init__(self, path: str, image: np.ndarray, device: torch.device) -> None:
        root = check_directory(path)
        try:
            from diffusers import AutoencoderKL, UNet2DConditionModel
            from transformers import CLIPTextModel, CLIPTokenizer
        except ImportError as error:
            raise InputError(f"--model PATH needs diffusers and transformers ({error}); install them: {INSTALL}") from None
        from ..guidance import CFGDenoiser

        self.device = device
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        load = dict(local_files_only=True, torch_dtype=dtype)
        self.unet = _load(root, "unet", lambda: UNet2DConditionModel.from_pretrained(root, subfolder="unet", **load))
        self.vae = _load(root, "vae", lambda: AutoencoderKL.from_pretrained(root, subfolder="vae", **load))
        self.text_encoder = _load(root, "text_encoder", lambda: CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **load))
        self.tokenizer = _load(root, "tokenizer", lambda: CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True))
        scheduler_config = json.loads(_load(root, "scheduler", lambda: (root / "scheduler" / "scheduler_config.json").read_text()))
        if self.unet.config.in_channels != self.vae.config.latent_channels:
            raise InputError(
                f"--model {path}: the UNet takes {self.unet.config.in_channels} channels, the VAE gives "
                f"{self.vae.config.latent_channels} (an inpainting model?); use a plain text-to-image model"
            )
        for module in (self.unet, self.vae, self.text_encoder):
            module.to(device).eval().requires_grad_(False)
        self.denoiser = CFGDenoiser(compvis_denoiser(self.unet, scheduler_config)).to(device)

        self.size = tuple(image.shape[:2])
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent = self._encode(to_tensor(image).to(device))

    def _encode(self, pixels: Tensor) -> Tensor:
        """(1, 3, H, W) in [-1, 1] -> the scaled latent (1, C, h, w), float32; the image is
        first resized to whole multiples of the VAE's factor."""
        height, width = (max(self.factor, round(side / self.factor) * self.factor) for side in self.size)
        if (height, width) != self.size:
            pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        with torch.no_grad():
            latent = self.vae.encode(pixels.clamp(-1, 1).to(self.vae.dtype)).latent_dist.mode()
        return latent.float() * self.vae.config.scaling_factor

    def _embed(self, text: str) -> Tensor:
        tokens = self.tokenizer(
            text, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        with torch.no_grad():
            return self.text_encoder(tokens.input_ids.to(self.device))[0]

    def extra_args(self, prompt: str, negative: str, cfg: float) -> dict[str, Any]:
        """The guidance arguments for every model call: text embeddings and scale."""
        return {"cond": self._embed(prompt), "uncond": self._embed(negative), "cfg_scale": cfg}

    def decode(self, latent: Tensor) -> np.ndarray:
        """A result latent (1, C, h, w) -> uint8 (H, W, 3) at the input's size."""
        with torch.no_grad():
            pixels = self.vae.decode((latent / self.vae.config.scaling_factor).to(self.vae.dtype)).sample.float()
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(pixels, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        return to_image(pixels.clamp(-1, 1))


def _load(root: Path, component: str, load: Any) -> Any:
    """Run ``load``; a missing or broken file becomes one InputError line."""
    try:
        return load()
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--model {root}: cannot load {component}/ ({reason})") from None
