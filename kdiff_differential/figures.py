"""Pictures that explain a run: the original | map | result strip, and the grid of
release masks over the steps."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

GAP = 4  # pixels of white between panels
TILE = 128  # the longest side of one mask in the grid


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _resize_grey(values: Tensor, height: int, width: int) -> np.ndarray:
    """(h, w) floats in [0, 1] -> uint8 (height, width), nearest neighbour so that the
    edges between released and frozen pixels stay sharp."""
    resized = F.interpolate(values[None, None].float(), size=(height, width), mode="nearest")[0, 0]
    return (resized * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def strip(original: np.ndarray, change_map: Tensor, result: np.ndarray) -> np.ndarray:
    """original | map | result side by side, uint8 (H, 3 W + 2 GAP, 3).

    ``original`` and ``result`` are uint8 (H, W, 3); ``change_map`` is the strength
    (h, w) in [0, 1] at any size (1 = change, shown white).
    """
    height, width = original.shape[:2]
    grey = F.interpolate(change_map[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)
    shown = _grey_to_rgb((grey[0, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    gap = np.full((height, GAP, 3), 255, np.uint8)
    return np.concatenate([original, gap, shown, gap, result], axis=1)


def mask_grid(masks: Sequence[Tensor], aspect: float) -> np.ndarray:
    """The release masks of a run as a grid of tiles, uint8 (rows, columns, 3).

    ``masks`` are (h, w) in [0, 1] (1 = released, white), one per step in order;
    ``aspect`` is the image's width / height, which the tiles keep.
    """
    height, width = (TILE, max(1, round(TILE * aspect))) if aspect <= 1 else (max(1, round(TILE / aspect)), TILE)
    columns = math.ceil(math.sqrt(len(masks)))
    rows = math.ceil(len(masks) / columns)
    # A colour between tiles, so that the border of an all-white tile shows.
    grid = np.full((rows * (height + GAP) - GAP, columns * (width + GAP) - GAP, 3), (200, 60, 60), np.uint8)
    for index, mask in enumerate(masks):
        row, column = divmod(index, columns)
        top, left = row * (height + GAP), column * (width + GAP)
        grid[top : top + height, left : left + width] = _grey_to_rgb(_resize_grey(mask, height, width))
    return grid
