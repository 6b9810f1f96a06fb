"""Model families: what differs between diffusers pipelines, one small adapter each.

This is the one place a family is described. :data:`FAMILIES` is the registry: the
loader (:mod:`.diffusers_model`) asks it which family a source is, the messages and
``--help`` list its names. Importing this module imports neither torch nor diffusers.

A family class says:

- ``name``: shown to the user ("Stable Diffusion XL");
- :meth:`Family.owns` (a ``model_index.json``) and :meth:`Family.owns_keys` (a single
  file's tensor names): whether a model is its own; ``pipelines`` are the diffusers
  ``_class_name`` values it takes, the first being the pipeline class that loads its
  single files and LoRAs;
- ``native_size``: the pixel size it was trained at;
- ``config_repo``: the Hub id a single file's configuration comes from without
  ``--config``, for a family diffusers infers none for (empty: diffusers' inference);
- ``network``, ``encoders``: the folders of the denoising network and of the
  (tokenizer, text encoder) pairs; ``optional``: those a folder may leave out;
- defaults: ``default_schedule`` (``karras``; flow models: ``model``),
  ``default_steps``, ``default_cfg``; ``cuda_dtype``: the weights' dtype on CUDA;
- ``patch``: latent sides must be multiples of it (transformers take 2x2 patches);
- ``guided``: whether the denoiser runs classifier-free guidance (``cond``/``uncond``);
- ControlNets (:mod:`.controlnets`): ``controlnets``, the diffusers classes that fit the
  network; ``control_fit``, the config keys a ControlNet must share with the network;
  ``control_outputs``, the network's keyword names for a ControlNet's outputs.
- ``reference``: whether it edits from a reference image (the input image, whose latent
  the conditions carry as ``reference``; FLUX.1 Kontext, Qwen-Image-Edit), and
  ``embed_reference(prompt, negative, size, image, latent)``, its conditions then.

- video: ``video_frames``, a video family's frames per latent frame (None: images), and
  ``frames_per_latent(vae)``, the loaded VAE's; its codec then takes pixels
  (1, 3, T, H, W) to latents (1, C, F, h, w) (Wan);
- ``denoising(parts)``: the network the denoiser runs, from the loaded parts (by default
  the folder ``network``; Wan 2.2 A14B: its two experts, ``experts`` 2, each guided by
  its own scale: ``extra_args(..., cfg_2=)``); ``exact_time``: the velocity call takes t
  in the sampler's dtype;
- the latent codec: ``latent_factor(vae)``, ``latent_channels(vae)``,
  ``vae_encode(vae, pixels)``, ``vae_decode(vae, latent)``: by default the VAE's
  downsampling and channels, ``(z - shift_factor) * scaling_factor`` of its config (a
  family whose VAE normalises otherwise, or whose latent the sampler sees patchified,
  overrides them).

An adapter is built complete, by the loader, from the loaded parts:
``Family(source, index, config, text, device, scheduler)`` (``config``: the network's,
``text``: the tokenizers and text encoders by folder name, ``scheduler``: the folder's
scheduler config). It then gives:

- ``defaults()``: (schedule, steps, cfg) this checkpoint runs by default: the family's,
  unless its configs say it is a few-step one (a UNet folder whose scheduler spaces
  "trailing", as SDXL Lightning, Hyper and Turbo publish; Flux.1 schnell);

- ``kind(latent_channels)``: "text-to-image" or "inpainting", from the network's input
  channels; InputError for a network the VAE does not fit;
- ``denoiser(network, scheduler, latent_size)``: the network as a k-diffusion denoiser
  (x, sigma, cond=...) -> x0 for latents of ``latent_size`` (h, w);
- ``embed(prompt, negative, size)``: the conditions (cond, uncond), each a dict of
  tensors with batch 1; uncond is None for an unguided family. ``size`` is (H, W) in pixels;
- ``extra_args(cond, uncond, cfg)``: what the denoiser takes at every call;
- ``prediction(scheduler)``: what the network predicts, for the user ("epsilon prediction",
  "flow matching").
- ``check_controlnet(config, latent, given)``: InputError for a ControlNet that does not
  fit; ``control_condition(image, config, vae)``: what a ControlNet takes for a control
  image; ``control_inputs(inputs, config)``: the network's inputs as that ControlNet takes them.

A new family is a class in a module of this package (one per family or group of
families sharing a network: :mod:`.unets`, :mod:`.sd3`, :mod:`.flux`, :mod:`.zimage`,
:mod:`.flux2`, :mod:`.qwen`, :mod:`.wan`; what they share is in :mod:`.base`) and an entry in
:data:`FAMILIES`. The UNet families wrap
their network as a CompVis model (:mod:`.networks`); the flow families (SD3, Flux) as a
velocity model reparametrised by :class:`~kdiff_differential.models.flow.FlowDenoiser`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from ...errors import InputError
from .base import FEW_STEPS, INPAINT_MASK, INPAINT_MASKS, UNET_PREFIX, Family, FlowFamily
from .unets import StableDiffusion, StableDiffusionXL, StableDiffusionXLRefiner
from .sd3 import StableDiffusion3
from .flux import Flux, FluxKontext, Chroma, FluxFill
from .zimage import ZImage
from .flux2 import Flux2Klein
from .qwen import QwenImage, QwenImageEdit
from .wan import Wan


# The registry. Each family's owns() and owns_keys() exclude the others', so the order does not matter.
FAMILIES: tuple[type[Family], ...] = (
    StableDiffusion, StableDiffusionXL, StableDiffusionXLRefiner, StableDiffusion3, Flux, FluxFill, FluxKontext, Chroma,
    ZImage, Flux2Klein, QwenImage, QwenImageEdit, Wan,
)


def supported() -> str:
    """The families this project runs, from the registry, for messages and ``--help``."""
    return ", ".join(family.name for family in FAMILIES)


def family_of_index(index: dict[str, Any], source: str) -> type[Family]:
    """The family whose pipeline ``model_index.json`` (``index``) describes; InputError
    (one line, naming what is supported) for a pipeline no family owns."""
    for family in FAMILIES:
        if family.owns(index):
            return family
    pipeline = str(index.get("_class_name", "?"))
    raise InputError(f"model={source}: a {pipeline} folder, which is not supported; supported: {supported()}")


def family_of_keys(keys: Collection[str], source: str) -> type[Family]:
    """The family of a single checkpoint file from its tensor names; InputError when no
    family, or more than one, recognises them."""
    owners = [family for family in FAMILIES if family.owns_keys(keys)]
    if len(owners) != 1:
        found = "no" if not owners else " and ".join(family.name for family in owners)
        raise InputError(f"model={source}: {found} model family recognises this checkpoint's tensors; supported: {supported()}")
    return owners[0]


__all__ = [
    "FAMILIES",
    "FEW_STEPS",
    "INPAINT_MASK",
    "INPAINT_MASKS",
    "UNET_PREFIX",
    "Family",
    "FlowFamily",
    "StableDiffusion",
    "StableDiffusionXL",
    "StableDiffusionXLRefiner",
    "StableDiffusion3",
    "Flux",
    "FluxKontext",
    "Chroma",
    "FluxFill",
    "ZImage",
    "Flux2Klein",
    "QwenImage",
    "QwenImageEdit",
    "Wan",
    "family_of_index",
    "family_of_keys",
    "supported",
]
