"""A change map at a latent's size: :func:`latent_map` brings a map (one per image, or per
video frame) to the latent's pixels, and a video's frames to its latent frames
(:func:`latent_frames`), as the wrapper reads it."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from .reading import as_strength, batch_maps, one_or_per_latent, strength_tensor

RESIZES = ("antialias", "bilinear", "nearest")


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
    return one_or_per_latent(change_map, shape, batch)


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
    strength = as_strength(strength_tensor(change_map), work)
    video = len(latent_shape) == 5
    strength = _as_video(strength, batch) if video else batch_maps(strength, batch)
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
