"""SD3/SD3.5 and Flux.1 from a local diffusers directory, on every k-diffusion sampler.

One loader for both families: components are built from the classes the folder's
``model_index.json`` names, the VAE maps images to latents with its ``shift_factor``
and ``scaling_factor``, and the transformer becomes a k-diffusion denoiser through
:class:`~kdiff_differential.models.flow.FlowDenoiser`. What differs per family lives in
a small adapter: how prompts become the transformer's text inputs, and how the
transformer is called (Flux packs the latent 2x2 into tokens with position ids; the
sampler and :class:`DifferentialDenoiser` always see the unpacked (B, C, H, W) latent,
so change maps work as for any model). Needs the ``diffusers`` extra.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..images import to_image, to_tensor
from .flow import FlowDenoiser


def _read_index(root: Path) -> dict[str, Any]:
    try:
        return json.loads((root / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}


def flow_family(path: str) -> Optional[str]:
    """'sd3' or 'flux' when ``path`` is a diffusers folder of that family, else None."""
    name = _read_index(Path(path)).get("_class_name", "")
    return {"StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}.get(name)


class SD3Text:
    """SD3/SD3.5's text inputs: two CLIP models with projection (penultimate hidden
    states side by side, zero-padded to T5's width, then T5's tokens after them; the
    pooled projections concatenated) and classifier-free guidance with a negative prompt."""

    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))
    guided = True
    t5_length = 256

    def embed(self, parts: dict[str, Any], transformer: nn.Module, text: str, device: torch.device) -> dict[str, Tensor]:
        clips, pooled = [], []
        for name in ("text_encoder", "text_encoder_2"):
            out = parts[name](_tokens(parts[name.replace("text_encoder", "tokenizer")], text, device), output_hidden_states=True)
            clips.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(clips, dim=-1)
        width = transformer.config.joint_attention_dim
        if parts.get("text_encoder_3") is not None:
            t5 = parts["text_encoder_3"](_tokens(parts["tokenizer_3"], text, device, self.t5_length))[0]
        else:
            t5 = clip.new_zeros(1, self.t5_length, width)
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        return {"text": torch.cat([clip, t5.to(clip.dtype)], dim=-2), "pooled": torch.cat(pooled, dim=-1)}

    def velocity(self, transformer: nn.Module, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        n = x_t.shape[0]
        return transformer(
            hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=_batch(cond["text"], n),
            pooled_projections=_batch(cond["pooled"], n),
        ).sample

    @staticmethod
    def image_seq_len(height: int, width: int) -> None:
        return None


class FluxText:
    """Flux.1's text inputs: CLIP's pooled output and T5's tokens. Guidance-distilled
    (dev): the guidance scale is an input of the transformer, one pass, no negative
    prompt; schnell has no guidance input. Latents go in packed 2x2 with position ids."""

    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    guided = False
    t5_length = 512

    def embed(self, parts: dict[str, Any], transformer: nn.Module, text: str, device: torch.device) -> dict[str, Tensor]:
        pooled = parts["text_encoder"](_tokens(parts["tokenizer"], text, device)).pooler_output
        t5 = parts["text_encoder_2"](_tokens(parts["tokenizer_2"], text, device, self.t5_length))[0]
        return {"text": t5, "pooled": pooled}

    def velocity(self, transformer: nn.Module, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        n, channels, height, width = x_t.shape
        # (N, C, H, W) -> (N, H/2 * W/2, 4C): one token per 2x2 patch, as the transformer was trained.
        tokens = x_t.reshape(n, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(n, (height // 2) * (width // 2), channels * 4)
        rows, cols = torch.meshgrid(torch.arange(height // 2), torch.arange(width // 2), indexing="ij")
        image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(x_t)
        guidance = cond.get("guidance")
        v = transformer(
            hidden_states=tokens, timestep=t, guidance=None if guidance is None else guidance.expand(n),
            pooled_projections=_batch(cond["pooled"], n), encoder_hidden_states=_batch(cond["text"], n),
            txt_ids=x_t.new_zeros(cond["text"].shape[1], 3), img_ids=image_ids,
        ).sample
        v = v.reshape(n, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return v.reshape(n, channels, height, width)

    @staticmethod
    def image_seq_len(height: int, width: int) -> int:
        return (height // 2) * (width // 2)


FAMILIES = {"sd3": SD3Text, "flux": FluxText}


def _tokens(tokenizer: Any, text: str, device: torch.device, length: Optional[int] = None) -> Tensor:
    length = min(length or tokenizer.model_max_length, tokenizer.model_max_length)
    return tokenizer(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids.to(device)


def _batch(tensor: Tensor, n: int) -> Tensor:
    return tensor.expand(n, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


class _Velocity(nn.Module):
    """The transformer as a velocity model ``(x_t, t, cond=...) -> v`` in x_t's dtype."""

    def __init__(self, transformer: nn.Module, family: Any) -> None:
        super().__init__()
        self.transformer, self.family = transformer, family

    def forward(self, x_t: Tensor, t: Tensor, *, cond: dict[str, Tensor]) -> Tensor:
        dtype = self.transformer.dtype
        cond = {key: value.to(dtype) for key, value in cond.items()}
        return self.family.velocity(self.transformer, x_t.to(dtype), t.to(dtype), cond).to(x_t.dtype)


class FlowModel:
    """A local diffusers SD3/SD3.5 or Flux.1 folder, fitted to one input image.

    ``latent`` is the image's VAE latent (1, C, H/8, W/8), float32, as
    ``(z - shift_factor) * scaling_factor``; ``denoiser`` the transformer as a
    k-diffusion denoiser (with classifier-free guidance for SD3); ``decode`` turns a
    result latent back into an image of the input's size. ``schedule`` is 'model': the
    model's own shifted schedule, from t = 1. Weights are bf16 on CUDA, fp32 on CPU.
    """

    schedule = "model"

    def __init__(self, path: str, image: np.ndarray, device: torch.device) -> None:
        root = Path(path)
        family = flow_family(path)
        if family is None:
            raise InputError(f"--model {path}: not a diffusers SD3 or Flux folder (model_index.json names no such pipeline)")
        from ..guidance import CFGDenoiser

        self.family = FAMILIES[family]()
        self.device = device
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        index = _read_index(root)
        names = ["transformer", "vae", *(name for pair in self.family.encoders for name in pair)]
        self.parts = {name: _load_part(root, name, index.get(name), dtype) for name in names}
        for part in self.parts.values():
            if isinstance(part, nn.Module):
                part.to(device).eval().requires_grad_(False)
        self.transformer, self.vae = self.parts["transformer"], self.parts["vae"]
        scheduler = _load_part(root, "scheduler", ["scheduler_config", None], dtype)

        self.size = tuple(image.shape[:2])
        # The latent's sides must be whole multiples of the transformer's 2x2 patches.
        self.factor = 2 ** (len(self.vae.config.block_out_channels) - 1) * 2
        self.latent = self._encode(to_tensor(image).to(device))
        seq_len = self.family.image_seq_len(*self.latent.shape[-2:])
        flow = FlowDenoiser.from_scheduler_config(_Velocity(self.transformer, self.family), scheduler, seq_len)
        self.denoiser = CFGDenoiser(flow) if self.family.guided else flow

    def _encode(self, pixels: Tensor) -> Tensor:
        height, width = (max(self.factor, round(side / self.factor) * self.factor) for side in self.size)
        if (height, width) != self.size:
            pixels = F.interpolate(pixels, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
        with torch.no_grad():
            latent = self.vae.encode(pixels.clamp(-1, 1).to(self.vae.dtype)).latent_dist.mode().float()
        config = self.vae.config
        return (latent - (config.shift_factor or 0)) * config.scaling_factor

    def extra_args(self, prompt: str, negative: str, cfg: float, change_map: Any = None) -> dict[str, Any]:
        """SD3: both prompts' embeddings and the guidance scale. Flux: the prompt's, and
        ``cfg`` as the guidance input of a guidance-distilled (dev) transformer; schnell
        and the negative prompt take no part. ``change_map`` is for inpainting models; unused."""
        with torch.no_grad():
            cond = self.family.embed(self.parts, self.transformer, prompt, self.device)
            if self.family.guided:
                uncond = self.family.embed(self.parts, self.transformer, negative, self.device)
                return {"cond": cond, "uncond": uncond, "cfg_scale": cfg}
        if self.transformer.config.get("guidance_embeds", False):
            cond["guidance"] = torch.tensor([float(cfg)], device=self.device)
        return {"cond": cond}

    def decode(self, latent: Tensor) -> np.ndarray:
        """A result latent (1, C, h, w) -> uint8 (H, W, 3) at the input's size."""
        config = self.vae.config
        with torch.no_grad():
            z = latent / config.scaling_factor + (config.shift_factor or 0)
            pixels = self.vae.decode(z.to(self.vae.dtype)).sample.float()
        if tuple(pixels.shape[-2:]) != self.size:
            pixels = F.interpolate(pixels, size=self.size, mode="bicubic", align_corners=False, antialias=True)
        return to_image(pixels.clamp(-1, 1))


def _load_part(root: Path, name: str, entry: Any, dtype: torch.dtype) -> Any:
    """Component ``name`` from the class model_index.json names for it; None where the
    folder leaves it out (SD3 without T5). A missing or broken file is one InputError line."""
    if entry == ["scheduler_config", None]:
        try:
            return json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"--model {root}: cannot load scheduler/ ({error})") from None
    if not entry or entry[0] is None:
        if name == "text_encoder_3" or name == "tokenizer_3":
            return None
        raise InputError(f"--model {root}: model_index.json names no {name}")
    library, class_name = entry
    try:
        cls = getattr(importlib.import_module(library), class_name)
        kwargs = dict(local_files_only=True)
        if not name.startswith("tokenizer"):
            kwargs["torch_dtype"] = dtype
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return cls.from_pretrained(root, subfolder=name, **kwargs)
    except (OSError, ValueError, KeyError, AttributeError, ImportError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--model {root}: cannot load {name}/ ({reason})") from None
