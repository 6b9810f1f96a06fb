"""Change maps: check a per-pixel strength map and bring it to the latent's size.

Convention: 1 = change (regenerate fully), 0 = keep. The official Differential
Diffusion code and the diffusers pipelines use the opposite *keep-map* (1 = keep);
pass ``keep_map=True`` for those.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

RESIZES = ("antialias", "bilinear", "nearest")


# The largest value of each integer image mode: a pixel is read as value / FULL_SCALE.
FULL_SCALE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 2**31 - 1}


# A map read from a lossy file (JPEG, lossy WebP, a lossy video codec) reads its values
# within this of 0 or 1 as exactly 0 or 1. Of the pixels a disk map (radius 60 in 256x256)
# saved as JPEG sets above 0 outside the disk, it clears all 692 at quality 95, all but 21
# of 840 at 90, and all but 328 of 945 at 75 (Pillow's default: ripples up to 37 levels
# next to the edge); on the built-in model strengths up to 16/255 change no pixel
# (docs/cli.md, "Lossy map files").
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


def _to_tensor(change_map: Any) -> Tensor:
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
    values = _as_strength(torch.as_tensor(np.ascontiguousarray(array)), torch.float32)
    grey = values[..., 0] * 0.299 + values[..., 1] * 0.587 + values[..., 2] * 0.114
    return grey * values[..., 3] if array.shape[-1] == 4 else grey


def _as_strength(change_map: Tensor, dtype: torch.dtype) -> Tensor:
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


def _one_or_per_latent(change_map: Tensor, shape: tuple[int, ...], batch: int) -> Tensor:
    """``change_map`` (its given ``shape``) if it holds one map, or one per latent of ``batch``."""
    if change_map.shape[0] not in (1, batch):
        raise ValueError(
            f"change_map has batch {change_map.shape[0]} (shape {shape}), but the latent has batch "
            f"{batch}: give one map for all, or one per latent"
        )
    if 0 in change_map.shape:
        raise ValueError(f"change_map is empty, shape {shape}")
    return change_map


def _as_4d(change_map: Tensor, batch: int) -> Tensor:
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
    return _one_or_per_latent(change_map, shape, batch)


def strength_array(change_map: Any, size: Optional[tuple[int, int]] = None) -> np.ndarray:
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


def change_strength(change_map: Any, size: tuple[int, int], *, keep_map: bool = False) -> np.ndarray:
    """``change_map`` as the image path holds it from here on: float32 (H, W) in [0, 1], 1 =
    change, at ``size`` = (H, W) (stretched as :func:`strength_array` does). It takes what
    :func:`latent_map` takes, with one map for the batch; ``keep_map=True`` reads
    it as 1 = keep and flips it (the one place a keep-map is read)."""
    strength = _as_4d(_as_strength(_to_tensor(change_map), torch.float32), 1)[0, 0]
    if keep_map:
        strength = 1 - strength
    return strength_array(strength, size).astype(np.float32)


def _as_video(change_map: Tensor, batch: int) -> Tensor:
    """A video latent's map as (B|1, 1, T, H, W): (H, W) and (T, H, W) for the batch,
    (B, T, H, W) and (B, 1, T, H, W) per video."""
    shape = tuple(change_map.shape)
    if change_map.ndim in (2, 3):  # one map (still or per frame) for the batch
        change_map = change_map.reshape(1, 1, *(1,) * (3 - change_map.ndim), *shape)
    elif change_map.ndim == 4:
        change_map = rearrange(change_map, "b t h w -> b 1 t h w")
    elif change_map.ndim != 5 or change_map.shape[1] != 1:
        raise ValueError(
            f"change_map for a video latent (B, C, F, H, W) must be (H, W), (T, H, W), (B, T, H, W) or "
            f"(B, 1, T, H, W) with T video frames, got shape {shape}"
        )
    return _one_or_per_latent(change_map, shape, batch)


def _check_frames_per_latent(frames_per_latent: Any) -> int:
    if isinstance(frames_per_latent, bool) or not isinstance(frames_per_latent, int):
        raise TypeError(f"frames_per_latent must be a positive int, got {type(frames_per_latent).__name__}")
    if frames_per_latent < 1:
        raise ValueError(f"frames_per_latent must be a positive int, got {frames_per_latent}")
    return frames_per_latent


def latent_frames(strength: Tensor, frames: int, frames_per_latent: int = 4) -> Tensor:
    """Per-frame strengths (..., T, H, W) brought to ``frames`` latent frames F as a causal
    video VAE (Wan's) merges frames: the first frame alone, then each group of
    ``frames_per_latent`` frames into one latent frame, so T = frames_per_latent * (F - 1) + 1.
    A latent frame takes the largest strength of its frames at each pixel: a frame that must
    change is never frozen. T = 1 is a still map, the same for every latent frame."""
    frames_per_latent = _check_frames_per_latent(frames_per_latent)
    given = strength.shape[-3]
    if given == 1:
        return strength.expand(*strength.shape[:-3], frames, *strength.shape[-2:])
    if given != frames_per_latent * (frames - 1) + 1:
        raise ValueError(
            f"change_map has {given} frames, but the latent's {frames} latent frames stand for "
            f"{frames_per_latent * (frames - 1) + 1} video frames (the first alone, then {frames_per_latent} "
            f"per latent frame; frames_per_latent={frames_per_latent}): give that many frames, or one still map"
        )
    rest = strength[..., 1:, :, :].unflatten(-3, (frames - 1, frames_per_latent)).amax(-3)
    return torch.cat([strength[..., :1, :, :], rest], dim=-3)


def latent_map(
    change_map: Any,
    latent_shape: Sequence[int],
    *,
    keep_map: bool = False,
    resize: str = "antialias",
    dtype: torch.dtype = torch.float32,
    device: Any = None,
    frames_per_latent: int = 4,
) -> Tensor:
    """Check ``change_map`` and return it as strengths of shape (1 or B, 1, H, W), or
    (1 or B, 1, F, H, W) for a video latent.

    ``change_map`` is (H', W'), (1|B, H', W') or (1|B, 1, H', W') at any resolution:
    a float tensor in [0, 1], an integer tensor of 8-bit grey levels (0..255), a bool
    tensor, an array, or a PIL image of any mode (read as :func:`image_strength` says). ``latent_shape`` is the latent's (B, C, H, W).
    The map is resized to H x W: ``resize="antialias"`` (bilinear, area-weighted when
    shrinking), ``"bilinear"`` (plain, ``align_corners=False``, as ComfyUI does) or
    ``"nearest"`` (``F.interpolate``'s default, as most diffusers pipelines do).
    ``keep_map=True`` reads the map as 1 = keep, 0 = change, and flips it.

    For a video latent, ``latent_shape`` (B, C, F, H, W), the map is (H', W') (one still map
    for every frame), (T, H', W'), (1|B, T, H', W') or (1|B, 1, T, H', W') with T video
    frames, brought to the F latent frames by :func:`latent_frames` (the largest strength of
    each group of ``frames_per_latent`` frames) before it is resized (docs/python.md,
    "Video latents").
    """
    if resize not in RESIZES:
        raise ValueError(f"resize must be one of {', '.join(map(repr, RESIZES))}, got {resize!r}")
    frames_per_latent = _check_frames_per_latent(frames_per_latent)
    if len(latent_shape) not in (4, 5):
        raise ValueError(f"latent_shape must be (B, C, H, W) or (B, C, F, H, W), got {tuple(latent_shape)}")
    batch, height, width = latent_shape[0], latent_shape[-2], latent_shape[-1]
    work = torch.float64 if dtype == torch.float64 else torch.float32
    strength = _as_strength(_to_tensor(change_map), work)
    video = len(latent_shape) == 5
    strength = _as_video(strength, batch) if video else _as_4d(strength, batch)
    if keep_map:  # before the frames are pooled: a latent frame takes its frames' largest change
        strength = 1 - strength
    if video:
        strength = latent_frames(strength, latent_shape[2], frames_per_latent)
    if strength.shape[-2:] != (height, width):
        strength = _resized(strength.to(device), height, width, resize)
    return strength.to(device=device, dtype=dtype)


def _resized(strength: Tensor, height: int, width: int, resize: str) -> Tensor:
    """(..., H', W') resized to (..., height, width), each 2-D map on its own."""
    leading = strength.shape[:-2]
    flat = strength.reshape(-1, 1, *strength.shape[-2:])
    if resize == "nearest":
        flat = F.interpolate(flat, size=(height, width))
    else:
        flat = F.interpolate(
            flat, size=(height, width), mode="bilinear", align_corners=False, antialias=resize == "antialias"
        ).clamp(0, 1)
    return flat.reshape(*leading, height, width)


def __getattr__(name: str) -> Any:
    if name == "prepare_change_map":
        from ..deprecation import renamed

        return renamed("prepare_change_map", "latent_map", latent_map)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
