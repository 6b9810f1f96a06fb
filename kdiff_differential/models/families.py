"""Model families: what differs between diffusers pipelines, one small adapter each.

:class:`~kdiff_differential.models.diffusers_model.DiffusersPipeline`, the one shared
loader, loads the VAE and the scheduler config itself and asks the family for the rest:

- ``name``: shown to the user ("Stable Diffusion XL");
- ``pipelines``: the ``_class_name`` values of ``model_index.json`` it takes;
- ``native_size``: the pixel size it was trained at;
- ``network``, ``encoders``: the folders of the denoising network and of the
  (tokenizer, text encoder) pairs; ``optional``: those a folder may leave out;
- ``schedule``: the default noise schedule (``karras``; flow models: ``model``);
- ``patch``: latent sides must be multiples of it (transformers take 2x2 patches);
- ``guided``: whether the denoiser runs classifier-free guidance (``cond``/``uncond``);
- ``default_cfg``: the guidance scale when none is given;
- ``cuda_dtype``: the weights' dtype on CUDA (fp32 on CPU);
- ``load(dtype, device)``: load the text encoders (kept on the adapter) and return the
  denoising network, on ``device``, in eval mode;
- ``kind(latent_channels)``: "text-to-image" or "inpainting", from the network's input
  channels; InputError for a network the VAE does not fit;
- ``denoiser(network, scheduler, latent_size)``: the network as a k-diffusion denoiser
  (x, sigma, cond=...) -> x0 for latents of ``latent_size`` (h, w);
- ``embed(prompt, negative, size)``: the conditions (cond, uncond), each a dict of
  tensors with batch 1; uncond is None for an unguided family. ``size`` is (H, W) in pixels;
- ``extra_args(cond, uncond, cfg)``: what the denoiser takes at every call;
- ``prediction(scheduler)``: what the network predicts, for the user ("epsilon prediction",
  "flow matching").

Families are detected by :func:`detect` from ``model_index.json``; a new one is a class
here and an entry in :data:`FAMILIES`. The UNet families wrap their network as a
CompVis model (:mod:`.networks`); the flow families (SD3, Flux) as a velocity model
reparametrised by :class:`~kdiff_differential.models.flow.FlowDenoiser`.
"""

from __future__ import annotations

import importlib
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from .flow import FlowDenoiser
from .networks import TransformerVelocity, compvis_denoiser

Conditions = tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]
# Libraries a model_index.json may name classes from; nothing else is imported.
LIBRARIES = ("diffusers", "transformers")


def load_part(root: Path, component: str, load: Callable[[], Any]) -> Any:
    """Run ``load``; a missing or broken file becomes one InputError line."""
    try:
        return load()
    except (OSError, ValueError, KeyError, AttributeError, ImportError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--model {root}: cannot load {component}/ ({reason})") from None


def read_config(root: Path, component: str, name: str = "config.json") -> dict[str, Any]:
    """``component/name`` as a dict; InputError when it is missing or not JSON."""
    return json.loads(load_part(root, component, lambda: (root / component / name).read_text()))


def load_component(root: Path, index: dict[str, Any], name: str, dtype: torch.dtype) -> Any:
    """The component in folder ``name``, built from the class ``model_index.json`` names
    for it (a diffusers or transformers class only); torch modules in ``dtype``."""
    entry = index.get(name) or [None, None]
    library, class_name = entry if len(entry) == 2 else (None, None)
    if library not in LIBRARIES or not isinstance(class_name, str):
        raise InputError(f"--model {root}: model_index.json names {entry!r} for {name}; expected a diffusers or transformers class")
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise InputError(f"--model {root}: {library} has no {class_name} (for {name}/); a newer {library} may")
    options: dict[str, Any] = {"subfolder": name, "local_files_only": True}
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        options["torch_dtype"] = dtype
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading advice (unused weights, legacy configs) is not the user's concern
        return load_part(root, name, lambda: cls.from_pretrained(root, **options))


def _batch(tensor: Tensor, n: int) -> Tensor:
    return tensor.expand(n, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


class Family:
    """What all families share: loading by ``model_index.json``, tokenising, and
    classifier-free guidance as the extra arguments."""

    name = ""
    pipelines: tuple[str, ...] = ()
    native_size = 512
    network = "unet"
    encoders: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)
    optional: tuple[str, ...] = ()
    schedule = "karras"
    patch = 1
    guided = True
    default_cfg = 7.0
    cuda_dtype = torch.float16

    def __init__(self, root: Path, index: dict[str, Any]) -> None:
        self.root, self.index = root, index

    def left_out(self, name: str) -> bool:
        """Whether the folder leaves out the optional part ``name`` (model_index.json names no class for it)."""
        return name in self.optional and not (self.index.get(name) or [None])[0]

    def missing(self) -> list[str]:
        """The folders this family needs that ``root`` lacks."""
        needed = [self.network, "vae", "scheduler", *(name for pair in self.encoders for name in pair)]
        return [name for name in needed if not self.left_out(name) and not (self.root / name).is_dir()]

    def load(self, dtype: torch.dtype, device: torch.device) -> nn.Module:
        self.device = device
        self.text: dict[str, Any] = {}
        for name in (name for pair in self.encoders for name in pair):
            part = None if self.left_out(name) else load_component(self.root, self.index, name, dtype)
            self.text[name] = part.to(device).eval().requires_grad_(False) if isinstance(part, nn.Module) else part
        network = load_component(self.root, self.index, self.network, dtype)
        self.config = network.config
        return network.to(device).eval().requires_grad_(False)

    def tokens(self, tokenizer: str, text: str, length: Optional[int] = None) -> Tensor:
        words = self.text[tokenizer]
        length = min(length or words.model_max_length, words.model_max_length)
        ids = words(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    def extra_args(self, cond: dict[str, Tensor], uncond: Optional[dict[str, Tensor]], cfg: float) -> dict[str, Any]:
        return {"cond": cond, "uncond": uncond, "cfg_scale": cfg}


class StableDiffusion(Family):
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, its last hidden state as
    ``crossattn``; a UNet with the CompVis interface, epsilon or v prediction."""

    name = "Stable Diffusion 1.x/2.x"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionKDiffusionPipeline")

    def kind(self, latent: int) -> str:
        channels = self.config.in_channels
        if channels not in (latent, 2 * latent + 1):
            raise InputError(
                f"--model {self.root}: the UNet takes {channels} channels and the VAE gives {latent}; "
                f"supported: {latent} (text-to-image) or {2 * latent + 1} (inpainting)"
            )
        return "inpainting" if channels == 2 * latent + 1 else "text-to-image"

    def denoiser(self, network: nn.Module, scheduler: dict[str, Any], latent_size: tuple[int, int]) -> nn.Module:
        return compvis_denoiser(network, scheduler)

    @staticmethod
    def prediction(scheduler: dict[str, Any]) -> str:
        return f"{scheduler.get('prediction_type', 'epsilon')} prediction"

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> Conditions:
        with torch.no_grad():
            return tuple({"crossattn": self.text["text_encoder"](self.tokens("tokenizer", t))[0].float()} for t in (prompt, negative))  # type: ignore[return-value]


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP encoders, their penultimate hidden states concatenated as
    ``crossattn``, the second's pooled projection as ``text_embeds``, and ``time_ids`` =
    (original H, W, crop top, left = 0, 0, target H, W). With ``force_zeros_for_empty_prompt``
    an empty negative prompt is all zeros, as diffusers does it."""

    name = "Stable Diffusion XL"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusionXLKDiffusionPipeline")
    native_size = 1024
    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))

    def _encode(self, text: str) -> dict[str, Tensor]:
        hidden = []
        for tokenizer, encoder in self.encoders:
            out = self.text[encoder](self.tokens(tokenizer, text), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        # The pooled embedding is the second (last) encoder's projection.
        return {"crossattn": torch.cat(hidden, dim=-1).float(), "text_embeds": out.text_embeds.float()}

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> Conditions:
        with torch.no_grad():
            cond = self._encode(prompt)
            zeros = self.index.get("force_zeros_for_empty_prompt", True) and not negative
            uncond = {k: torch.zeros_like(v) for k, v in cond.items()} if zeros else self._encode(negative)
        return {**cond, "time_ids": self.time_ids(size, True)}, {**uncond, "time_ids": self.time_ids(size, False)}

    def time_ids(self, size: tuple[int, int], positive: bool) -> Tensor:
        """(1, 6): the original size, the crop's top-left corner (0, 0), the target size."""
        return torch.tensor([[*size, 0, 0, *size]], dtype=torch.float32, device=self.device)


class StableDiffusionXLRefiner(StableDiffusionXL):
    """The SDXL refiner: the second CLIP encoder alone, and ``time_ids`` = (original H, W,
    crop 0, 0, aesthetic score), the score 6 for the prompt and 2.5 for the negative (as
    diffusers' StableDiffusionXLImg2ImgPipeline). Its folder has no ``text_encoder``."""

    name = "Stable Diffusion XL refiner"
    pipelines = ("StableDiffusionXLImg2ImgPipeline:refiner", "StableDiffusionXLPipeline:refiner")
    encoders = (("tokenizer_2", "text_encoder_2"),)
    aesthetic_scores = (6.0, 2.5)

    def time_ids(self, size: tuple[int, int], positive: bool) -> Tensor:
        score = self.aesthetic_scores[0 if positive else 1]
        return torch.tensor([[*size, 0, 0, score]], dtype=torch.float32, device=self.device)


class FlowFamily(Family):
    """A flow-matching transformer: the denoiser is :class:`FlowDenoiser` around the
    family's ``velocity(transformer, x_t, t, cond) -> v`` call (see :mod:`.networks`), on
    the model's own shifted schedule from t = 1. ``pack`` is the side of the patches the
    adapter packs into tokens itself (the transformer's ``in_channels`` is the latent's
    times pack²)."""

    network = "transformer"
    schedule = "model"
    patch = 2
    pack = 1
    cuda_dtype = torch.bfloat16

    def kind(self, latent: int) -> str:
        channels, expected = self.config.in_channels, latent * self.pack**2
        if channels != expected:
            raise InputError(
                f"--model {self.root}: the transformer takes {channels} channels and the VAE gives {latent}; "
                f"supported: {expected} (text-to-image)"
            )
        return "text-to-image"

    def denoiser(self, network: nn.Module, scheduler: dict[str, Any], latent_size: tuple[int, int]) -> nn.Module:
        tokens = (latent_size[0] // 2) * (latent_size[1] // 2)
        return FlowDenoiser.from_scheduler_config(TransformerVelocity(network, self.velocity), scheduler, tokens)

    @staticmethod
    def prediction(scheduler: dict[str, Any]) -> str:
        return "flow matching"


class StableDiffusion3(FlowFamily):
    """SD3/SD3.5: two CLIP models with projection (penultimate hidden states side by
    side, zero-padded to T5's width, then T5's tokens after them; the pooled projections
    concatenated) and classifier-free guidance with a negative prompt. A folder without
    T5 gets zeros for its tokens, as in diffusers."""

    name = "Stable Diffusion 3/3.5"
    pipelines = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    native_size = 1024
    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))
    optional = ("tokenizer_3", "text_encoder_3")
    t5_length = 256

    def _encode(self, text: str) -> dict[str, Tensor]:
        clips, pooled = [], []
        for tokenizer, encoder in self.encoders[:2]:
            out = self.text[encoder](self.tokens(tokenizer, text), output_hidden_states=True)
            clips.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(clips, dim=-1)
        width = self.config.joint_attention_dim
        if self.text["text_encoder_3"] is not None:
            t5 = self.text["text_encoder_3"](self.tokens("tokenizer_3", text, self.t5_length))[0]
        else:
            t5 = clip.new_zeros(1, self.t5_length, width)
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        return {"text": torch.cat([clip, t5.to(clip.dtype)], dim=-2).float(), "pooled": torch.cat(pooled, dim=-1).float()}

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> Conditions:
        with torch.no_grad():
            return self._encode(prompt), self._encode(negative)

    @staticmethod
    def velocity(transformer: nn.Module, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        n = x_t.shape[0]
        return transformer(
            hidden_states=x_t, timestep=t * 1000, encoder_hidden_states=_batch(cond["text"], n),
            pooled_projections=_batch(cond["pooled"], n),
        ).sample


class Flux(FlowFamily):
    """Flux.1: CLIP's pooled output and T5's tokens. Guidance-distilled (dev): the
    guidance scale is an input of the transformer, one pass, no negative prompt;
    schnell has no guidance input. The latent goes in packed 2x2 into tokens with
    position ids, inside the call only: samplers and change maps see (N, C, H, W)."""

    name = "Flux.1"
    pipelines = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    native_size = 1024
    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    guided = False
    # The distilled guidance input is trained around 3.5 (diffusers' FluxPipeline default).
    default_cfg = 3.5
    pack = 2
    t5_length = 512

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> Conditions:
        with torch.no_grad():
            pooled = self.text["text_encoder"](self.tokens("tokenizer", prompt)).pooler_output
            t5 = self.text["text_encoder_2"](self.tokens("tokenizer_2", prompt, self.t5_length))[0]
        return {"text": t5.float(), "pooled": pooled.float()}, None

    def extra_args(self, cond: dict[str, Tensor], uncond: Optional[dict[str, Tensor]], cfg: float) -> dict[str, Any]:
        if self.config.get("guidance_embeds", False):
            cond = {**cond, "guidance": torch.tensor([float(cfg)], device=self.device)}
        return {"cond": cond}

    @staticmethod
    def velocity(transformer: nn.Module, x_t: Tensor, t: Tensor, cond: dict[str, Tensor]) -> Tensor:
        n, channels, height, width = x_t.shape
        # (N, C, H, W) -> (N, H/2 * W/2, 4C): one token per 2x2 patch, as the transformer was trained.
        tokens = x_t.reshape(n, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
        tokens = tokens.reshape(n, (height // 2) * (width // 2), channels * 4)
        # Built on x_t's device: a host-made table would be copied over at every call.
        rows, cols = torch.meshgrid(torch.arange(height // 2, device=x_t.device), torch.arange(width // 2, device=x_t.device), indexing="ij")
        image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(x_t)
        guidance = cond.get("guidance")
        v = transformer(
            hidden_states=tokens, timestep=t, guidance=None if guidance is None else guidance.expand(n),
            pooled_projections=_batch(cond["pooled"], n), encoder_hidden_states=_batch(cond["text"], n),
            txt_ids=x_t.new_zeros(cond["text"].shape[1], 3), img_ids=image_ids,
        ).sample
        v = v.reshape(n, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return v.reshape(n, channels, height, width)


FAMILIES = (StableDiffusion, StableDiffusionXL, StableDiffusionXLRefiner, StableDiffusion3, Flux)
SUPPORTED = "supported: Stable Diffusion 1.x/2.x and SDXL (text-to-image or inpainting), the SDXL refiner, SD3/SD3.5 and Flux.1 diffusers folders"


def detect(root: Path) -> Family:
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
        pipeline += ":refiner"  # the refiner's folder is an SDXL one without the first encoder
    for kind in FAMILIES:
        if pipeline in kind.pipelines:
            family = kind(root, index)
            missing = family.missing()
            if missing:
                raise InputError(f"--model {root}: a {family.name} folder without {', '.join(missing)}/")
            return family
    raise InputError(f"--model {root}: a {pipeline} folder, which is not supported; {SUPPORTED}")
