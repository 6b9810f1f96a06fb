"""Model families: what differs between diffusers pipelines, one small adapter each.

This is the one place a family is registered: :data:`FAMILIES`. The loader
(:mod:`..diffusers_model`) asks it which family a source is, and the messages and
``--help`` list its names. Each family is a :class:`~.base.Family` (the interface, its
hooks typed there; :class:`~.base.FlowFamily` for the flow transformers), in a module per
family or group sharing a network (:mod:`.unets`, :mod:`.sd3`, :mod:`.flux`,
:mod:`.zimage`, :mod:`.flux2`, :mod:`.qwen`, :mod:`.wan`). A new family is a class in one
of them, or a new one, and an entry in :data:`FAMILIES`; docs/models.md ("The family
interface") walks through the hooks. Importing this module imports neither torch nor
diffusers.
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
