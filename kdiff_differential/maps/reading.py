"""Reading a change map: strengths in [0, 1] (1 = change, 0 = keep) from a tensor, an
array, integers as 8-bit grey levels, booleans or a PIL image of any mode, checked.

The official Differential Diffusion code and the diffusers pipelines use the opposite
*keep-map* (1 = keep); ``keep_map=True`` flips one where it is read.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

# The largest value of each integer image mode: a pixel is read as value / FULL_SCALE.
FULL_SCALE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 2**31 - 1}


# A map read from a lossy file (JPEG, lossy WebP, a lossy video codec) reads its values
# within this of 0 or 1 as exactly 0 or 1: most of a JPEG's ripples next to an edge are
# smaller, and on the built-in model strengths this small change no pixel
# (docs/cli.md, "Lossy map files", has the counts).
LOSSY_SNAP = 8 / 255
# Pillow's formats that are always lossy (a WebP may be either: see files.images.read_map).
LOSSY_FORMATS = ("JPEG", "MPO", "AVIF")


def image_strength(image: Any, name: str = "change_map", snap: Optional[float] = None) -> Tensor:
    """The strengths a PIL image stands for, float32 (H, W) in [0, 1], read by its mode's range.

    Grey levels of 1-bit, 8-bit and palette images over 0..255 (white = 1); 16-bit grey
    (``I;16*``) over 0..65535; 32-bit integers (``I``) over 0..2^31 - 1, refused when all
    its values fit in 16 bits (its range is then unclear); float (``F``) as is, refused
    outside [0, 1]. Colour is read as its luminance (ITU-R 601, as Pillow's ``"L"``), and
    alpha as coverage over black: strength = grey * alpha, so transparent pixels are 0.
    ValueError (naming ``name``) for NaN, inf or values out of range.

    ``snap`` reads strengths within it of 0 or 1 as exactly 0 or 1, so that a lossy
    file's compression noise neither frees kept pixels nor holds back changed ones. By
    default (None) an image opened from a JPEG or AVIF file (its ``format``) snaps by
    :data:`LOSSY_SNAP` and any other by 0; :func:`~kdiff_differential.files.images.read_map`
    also tells a lossy WebP by its bytes.
    """
    if snap is None:
        snap = LOSSY_SNAP if getattr(image, "format", None) in LOSSY_FORMATS else 0.0
    if isinstance(snap, bool) or not isinstance(snap, (int, float)) or not 0 <= snap < 0.5:
        raise ValueError(f"snap must be a number in [0, 0.5), got {snap!r}")
    strength = _image_strength(image, name)
    if snap:
        # A hair above snap, so that a level of exactly snap * 255 (computed in float32) is caught.
        near = snap + 1e-6
        strength = torch.where(strength <= near, 0.0, torch.where(strength >= 1 - near, 1.0, strength))
    return strength


def _image_strength(image: Any, name: str) -> Tensor:
    import numpy as np

    mode = image.mode
    if mode == "F":
        values = np.array(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ValueError(f"{name} is a float image with NaN or inf values; give values in 0..1")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"{name} is a float image with values {values.min():g}..{values.max():g}: its range is "
                f"unclear; scale it to 0..1 (1 = change) or save it as 8- or 16-bit grey"
            )
        return torch.from_numpy(values)
    if mode in FULL_SCALE:
        values = np.asarray(image).astype(np.int64)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if low < 0 or (mode == "I" and 0 < high <= 65535):
            raise ValueError(
                f"{name} is a {'16' if mode != 'I' else '32'}-bit integer image with values {low}..{high}: "
                f"its range is unclear; save it as 8- or 16-bit grey, or as float in 0..1"
            )
        return torch.from_numpy((values / FULL_SCALE[mode]).astype(np.float32))
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        grey, alpha = np.moveaxis(np.asarray(image.convert("RGBA").convert("LA"), dtype=np.float32), -1, 0)
        return torch.from_numpy(grey * alpha / 255**2)
    return torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255)


def strength_tensor(change_map: Any) -> Tensor:
    if isinstance(change_map, Tensor):
        return change_map.detach()
    if hasattr(change_map, "getbands"):  # a PIL image
        return image_strength(change_map)
    if type(change_map).__module__ == "numpy" and getattr(change_map, "ndim", 0) == 3 and change_map.shape[-1] in (3, 4):
        return _colour_array_strength(change_map)
    try:
        return torch.as_tensor(change_map)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"change_map must be a tensor, an array or a PIL image, got {type(change_map).__name__}"
        ) from error


def _colour_array_strength(array: Any) -> Tensor:
    """An (H, W, 3|4) array, as images are held in numpy: the strength its picture
    stands for, read as a map file is (luminance; alpha as coverage over black)."""
    from PIL import Image

    import numpy as np

    if array.dtype == np.uint8:
        return image_strength(Image.fromarray(array, "RGBA" if array.shape[-1] == 4 else "RGB"))
    values = as_strength(torch.as_tensor(np.ascontiguousarray(array)), torch.float32)
    grey = values[..., 0] * 0.299 + values[..., 1] * 0.587 + values[..., 2] * 0.114
    return grey * values[..., 3] if array.shape[-1] == 4 else grey


def as_strength(change_map: Tensor, dtype: torch.dtype) -> Tensor:
    """Values in [0, 1]: integers are read as 8-bit grey levels, booleans as 0/1."""
    if change_map.dtype == torch.bool:
        return change_map.to(dtype)
    if not change_map.is_floating_point():
        if change_map.is_complex():
            raise TypeError(f"change_map must be real, got {change_map.dtype}")
        if change_map.numel() and (change_map.min() < 0 or change_map.max() > 255):
            raise ValueError(
                f"an integer change_map is read as 8-bit grey levels and must lie in 0..255, "
                f"got {change_map.min().item()}..{change_map.max().item()}"
            )
        return change_map.to(dtype) / 255
    if not torch.isfinite(change_map).all():
        raise ValueError("change_map must be finite, got NaN or inf")
    if change_map.numel() and (change_map.min() < 0 or change_map.max() > 1):
        raise ValueError(
            f"a float change_map must lie in [0, 1] (1 = change), got "
            f"{change_map.min().item():g}..{change_map.max().item():g}; "
            f"pass 8-bit grey levels as an integer tensor"
        )
    return change_map.to(dtype)


def one_or_per_latent(change_map: Tensor, shape: tuple[int, ...], batch: int) -> Tensor:
    """``change_map`` (its given ``shape``) if it holds one map, or one per latent of ``batch``."""
    if change_map.shape[0] not in (1, batch):
        raise ValueError(
            f"change_map has batch {change_map.shape[0]} (shape {shape}), but the latent has batch "
            f"{batch}: give one map for all, or one per latent"
        )
    if 0 in change_map.shape:
        raise ValueError(f"change_map is empty, shape {shape}")
    return change_map


def batch_maps(change_map: Tensor, batch: int) -> Tensor:
    shape = tuple(change_map.shape)
    if change_map.ndim == 2:
        change_map = rearrange(change_map, "h w -> 1 1 h w")
    elif change_map.ndim == 3:
        if change_map.shape[-1] in (3, 4) and change_map.shape[0] not in (1, batch):
            raise ValueError(
                f"change_map of shape {shape} looks like a colour image (H, W, {shape[-1]}); give it as a "
                f"numpy array or PIL image (read as its luminance), or as grey strengths (H, W)"
            )
        change_map = rearrange(change_map, "b h w -> b 1 h w")
    elif change_map.ndim != 4 or change_map.shape[1] != 1:
        raise ValueError(
            f"change_map must be (H, W), (B, H, W) or (B, 1, H, W), got shape {shape}"
        )
    return one_or_per_latent(change_map, shape, batch)


def strength_array(change_map: Any, size: Optional[tuple[int, ...]] = None) -> np.ndarray:
    """A 2-D map of strengths (h, w) in [0, 1] (1 = change; a tensor or an array) as
    float64 (h, w), or stretched to ``size`` = (H, W) when given and different (bilinear,
    area-weighted when shrinking, as the wrapper stretches a map to the latent).
    ValueError for another shape or values outside [0, 1]."""
    strength = torch.as_tensor(np.asarray(change_map.detach().cpu() if isinstance(change_map, Tensor) else change_map),
                               dtype=torch.float64)
    if strength.ndim != 2 or 0 in strength.shape:
        raise ValueError(f"change_map must be a 2-D map (h, w), got shape {tuple(strength.shape)}")
    if not torch.isfinite(strength).all() or strength.min() < 0 or strength.max() > 1:
        raise ValueError("change_map must hold strengths in [0, 1] (1 = change)")
    if size is not None and tuple(strength.shape) != tuple(size):
        strength = F.interpolate(strength[None, None], size=tuple(size), mode="bilinear", align_corners=False,
                                 antialias=True)[0, 0].clamp(0, 1)
    return strength.numpy()


def change_strength(change_map: Any, size: tuple[int, ...], *, keep_map: bool = False) -> np.ndarray:
    """``change_map`` as the image path holds it from here on: float32 (H, W) in [0, 1], 1 =
    change, at ``size`` = (H, W) (stretched as :func:`strength_array` does). It takes what
    :func:`latent_map` takes, with one map for the batch; ``keep_map=True`` reads
    it as 1 = keep and flips it (the one place a keep-map is read)."""
    strength = batch_maps(as_strength(strength_tensor(change_map), torch.float32), 1)[0, 0]
    if keep_map:
        strength = 1 - strength
    return strength_array(strength, size).astype(np.float32)
