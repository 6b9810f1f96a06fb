"""Pixels as the package holds them: an image is uint8 (H, W, 3), a clip's frames uint8
(T, H, W, 3); a model sees float tensors (1, 3, H, W) in [-1, 1]."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def _describe(pixels: Any) -> str:
    return f"{getattr(pixels, 'dtype', type(pixels).__name__)} of shape {getattr(pixels, 'shape', None)}"


def require_rgb(image: Any, name: str) -> np.ndarray:
    """``image`` if it is a uint8 array (H, W, 3), else a TypeError naming ``name``."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise TypeError(f"{name} must be a uint8 array (H, W, 3), got {_describe(image)}")
    return image


def require_frames(frames: Any, name: str) -> np.ndarray:
    """``frames`` if it is a uint8 array (T, H, W, 3) with T >= 1, else a TypeError naming ``name``."""
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise TypeError(f"{name} must be a uint8 array (T, H, W, 3) with T >= 1, got {_describe(frames)}")
    return frames


def as_frames(pixels: Any, name: str) -> tuple[np.ndarray, bool]:
    """An image (H, W, 3) as one frame (1, H, W, 3), or a clip's frames (T, H, W, 3) as
    they are, and whether it was a clip; TypeError naming ``name`` for anything else."""
    if isinstance(pixels, np.ndarray) and pixels.ndim == 4:
        return require_frames(pixels, name), True
    return require_rgb(pixels, name)[None], False


def writable(pixels: np.ndarray) -> np.ndarray:
    """``pixels``, or a copy where it is read-only (``np.asarray`` of a PIL image), which
    torch would warn about on every tensor made from it."""
    return pixels if pixels.flags.writeable else pixels.copy()


def to_tensor(image: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) -> float32 (1, 3, H, W) in [-1, 1]."""
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    return pixels.float() / 127.5 - 1


def to_image(pixels: Tensor) -> np.ndarray:
    """float (1, 3, H, W) in [-1, 1] -> uint8 (H, W, 3), rounded to the nearest level."""
    levels = ((pixels[0].detach().float().cpu() + 1) * 127.5).round().clamp(0, 255)
    return levels.to(torch.uint8).permute(1, 2, 0).numpy()
