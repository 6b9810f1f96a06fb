"""Model families: what differs between diffusers pipelines, one small adapter each.

The adapter interface (what :class:`~kdiff_differential.models.diffusers_model.DiffusersPipeline`,
the one shared loader, asks of a family):

- ``name``: shown to the user ("Stable Diffusion XL");
- ``pipelines``: the ``_class_name`` values of ``model_index.json`` it takes;
- ``native_size``: the pixel size it was trained at (SDXL's default ``time_ids``);
- ``load(root, dtype, device)``: load the text encoders (kept on the adapter) and return
  the denoising network (a ``UNet2DConditionModel``), on ``device``, in eval mode;
- ``embed(prompt, negative, size)``: the conditions (cond, uncond), each a dict of
  tensors with batch 1 that :class:`~kdiff_differential.models.diffusers_model.DiffusersUNet`
  reads (``crossattn``, and the family's added conditions). ``size`` is (H, W) in pixels.

Families are detected by :func:`detect` from ``model_index.json``; a new one is a class
here and an entry in :data:`FAMILIES`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import InputError

def load_part(root: Path, component: str, load: Callable[[], Any]) -> Any:
    """Run ``load``; a missing or broken file becomes one InputError line."""
    try:
        return load()
    except (OSError, ValueError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--model {root}: cannot load {component}/ ({reason})") from None


def read_config(root: Path, component: str, name: str = "config.json") -> dict[str, Any]:
    """``component/name`` as a dict; InputError when it is missing or not JSON."""
    return json.loads(load_part(root, component, lambda: (root / component / name).read_text()))


# Pipelines we know but do not run (yet), and why: refused in one line.
UNSUPPORTED = {
    "StableDiffusionXLImg2ImgPipeline:refiner": "the SDXL refiner (one text encoder, aesthetic-score time_ids)",
    # Flow models load through load_model / --model (models/diffusers_flow.py), not this loader yet.
    "StableDiffusion3Pipeline": "Stable Diffusion 3 (a flow-matching transformer; use load_model or --model)",
    "FluxPipeline": "Flux (a flow-matching transformer; use load_model or --model)",
}


class StableDiffusion:
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, its last hidden state as ``crossattn``."""

    name = "Stable Diffusion 1.x/2.x"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionKDiffusionPipeline")
    native_size = 512
    encoders = (("tokenizer", "text_encoder", "CLIPTextModel"),)

    def load(self, root: Path, dtype: torch.dtype, device: torch.device) -> nn.Module:
        import transformers
        from diffusers import UNet2DConditionModel

        self.device = device
        self.pairs = []
        for tokenizer, encoder, kind in self.encoders:
            model_class = getattr(transformers, kind)
            text = load_part(root, encoder, lambda: model_class.from_pretrained(root, subfolder=encoder, local_files_only=True, torch_dtype=dtype))
            words = load_part(root, tokenizer, lambda: transformers.CLIPTokenizer.from_pretrained(root, subfolder=tokenizer, local_files_only=True))
            self.pairs.append((words, text.to(device).eval().requires_grad_(False)))
        unet = load_part(root, "unet", lambda: UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True, torch_dtype=dtype))
        self.unet_config = unet.config
        return unet.to(device).eval().requires_grad_(False)

    def _tokens(self, words: Any, text: str) -> Tensor:
        ids = words(text, padding="max_length", max_length=words.model_max_length, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        words, text = self.pairs[0]
        with torch.no_grad():
            return tuple({"crossattn": text(self._tokens(words, t))[0].float()} for t in (prompt, negative))  # type: ignore[return-value]


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP encoders, their penultimate hidden states concatenated as
    ``crossattn``, the second's pooled projection as ``text_embeds``, and ``time_ids`` =
    (original H, W, crop top, left = 0, 0, target H, W). With ``force_zeros_for_empty_prompt``
    an empty negative prompt is all zeros, as diffusers does it."""

    name = "Stable Diffusion XL"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusionXLKDiffusionPipeline")
    native_size = 1024
    encoders = (("tokenizer", "text_encoder", "CLIPTextModel"), ("tokenizer_2", "text_encoder_2", "CLIPTextModelWithProjection"))

    def __init__(self, zeros_for_empty: bool = True) -> None:
        self.zeros_for_empty = zeros_for_empty

    def _encode(self, text: str) -> dict[str, Tensor]:
        hidden = []
        for words, encoder in self.pairs:
            out = encoder(self._tokens(words, text), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        # The pooled embedding is the second (last) encoder's projection.
        return {"crossattn": torch.cat(hidden, dim=-1).float(), "text_embeds": out.text_embeds.float()}

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        with torch.no_grad():
            cond = self._encode(prompt)
            uncond = {k: torch.zeros_like(v) for k, v in cond.items()} if self.zeros_for_empty and not negative else self._encode(negative)
        time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=torch.float32, device=self.device)
        return {**cond, "time_ids": time_ids}, {**uncond, "time_ids": time_ids}


FAMILIES = (StableDiffusion, StableDiffusionXL)
SUPPORTED = "supported: Stable Diffusion 1.x/2.x and SDXL diffusers folders, text-to-image or inpainting"


def detect(root: Path) -> Any:
    """The family adapter for the diffusers folder ``root``; InputError (one line, naming
    what is supported) for a folder that is not one or a pipeline we do not run."""
    if not root.is_dir():
        raise InputError(f"--model {root}: no such directory; give 'builtin' or a local diffusers folder ({SUPPORTED})")
    try:
        index = json.loads((root / "model_index.json").read_text())
    except FileNotFoundError:
        raise InputError(f"--model {root}: not a diffusers folder (no model_index.json); {SUPPORTED}") from None
    except (OSError, ValueError) as error:
        raise InputError(f"--model {root}: cannot read model_index.json ({error})") from None
    pipeline = str(index.get("_class_name", "?"))
    if "text_encoder_2" in index and not (index.get("text_encoder") or [None])[-1]:
        pipeline += ":refiner"
    if pipeline in UNSUPPORTED:
        raise InputError(f"--model {root}: {UNSUPPORTED[pipeline]} is not supported yet; {SUPPORTED}")
    for family in FAMILIES:
        if pipeline in family.pipelines:
            missing = [name for name in ("unet", "vae", "scheduler", *(n for pair in family.encoders for n in pair[:2])) if not (root / name).is_dir()]
            if missing:
                raise InputError(f"--model {root}: a {family.name} folder without {', '.join(missing)}/")
            if family is StableDiffusionXL:
                return family(bool(index.get("force_zeros_for_empty_prompt", True)))
            return family()
    raise InputError(f"--model {root}: a {pipeline} folder, which is not supported; {SUPPORTED}")
