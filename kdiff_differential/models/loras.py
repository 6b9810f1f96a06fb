"""LoRAs, applied by diffusers' own loader (``load_lora_weights``): the diffusers/peft
and the kohya/A1111 key layouts, for the families diffusers loads LoRAs for, text
encoder parts included. The LoRAs are fused into the weights at their scales (scale 0
adds nothing: the model is as without it), so sampling costs what it did.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Sequence, Union

from ..errors import InputError
from .sources import PICKLE_RISK, is_pickle

Lora = tuple[Path, float]


def parse_lora(text: str) -> Lora:
    """``FILE[:SCALE]`` (scale 1 by default) as (path, scale). A ``:`` followed by
    something that is not a number is part of the path only where that path exists
    (``C:\\x.safetensors``); otherwise it is an InputError naming the scale."""
    path, _, scale = text.rpartition(":")
    if not path or Path(text).exists():
        return Path(text), 1.0
    try:
        value = float(scale)
    except ValueError:
        raise InputError(f"lora={text}: the scale {scale!r} is not a number; give FILE or FILE:SCALE") from None
    return Path(path), value


def check_loras(loras: Sequence[tuple[Union[str, Path], float]], allow_pickle: bool = False) -> list[Lora]:
    """``loras`` as (path, scale) pairs, checked before anything loads: each file exists
    and is not a pickle (unless ``allow_pickle``), each scale a finite number."""
    if isinstance(loras, (str, Path)) or not isinstance(loras, Sequence):
        raise TypeError(f"loras must be a sequence of (file, scale) pairs, got {loras!r}")
    checked = []
    for entry in loras:
        if not (isinstance(entry, (tuple, list)) and len(entry) == 2 and isinstance(entry[0], (str, Path))):
            raise TypeError(f"each of loras must be a (file, scale) pair, got {entry!r}")
        path, scale = Path(entry[0]), entry[1]
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise InputError(f"lora={path}: the scale must be a finite number, got {scale!r}")
        if not path.is_file():
            raise InputError(f"lora={path}: no such file")
        if is_pickle(path) and not allow_pickle:
            raise InputError(f"lora={path}: refused, {PICKLE_RISK}")
        checked.append((path, float(scale)))
    return checked


def apply_loras(pipeline: Any, family: str, loras: Sequence[Lora]) -> None:
    """Fuse ``loras`` (checked (path, scale) pairs) into the modules of ``pipeline`` (a
    diffusers pipeline around the loaded parts, changed in place) with its own LoRA
    loader; ``family`` names the model in messages. A LoRA that does not fit (another
    family, other shapes), a corrupt file or one with nothing for this model is an
    InputError."""
    names = []
    for number, (path, scale) in enumerate(loras):
        name = f"lora{number}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                pipeline.load_lora_weights(str(path), adapter_name=name)
            except Exception as error:  # safetensors, peft and torch raise many kinds for a bad file
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise InputError(f"lora={path}: does not fit this {family} model ({reason[:300]})") from None
        if not any(name in adapters for adapters in pipeline.get_list_adapters().values()):
            raise InputError(f"lora={path}: none of its weights matches a layer of this {family} model (a LoRA for another family?)")
        names.append(name)
    pipeline.set_adapters(names, adapter_weights=[scale for _, scale in loras])
    modules = [module for module in pipeline._lora_loadable_modules if getattr(pipeline, module, None) is not None]
    pipeline.fuse_lora(components=modules, adapter_names=names)
    pipeline.unload_lora_weights()
