"""Pictures that explain a run: the original | map | result strip, and the grid of
release masks over the steps, each panel with a label above it."""

from __future__ import annotations

import math
import re
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..maps.reading import strength_array

GAP = 4  # pixels of white between panels
TILE = 128  # the longest side of one mask in the grid
LABEL = 16  # pixels of the white band above a panel that holds its label


def _grey_to_rgb(grey: np.ndarray) -> np.ndarray:
    return np.repeat(grey[..., None], 3, axis=2)


def _resize_grey(values: Tensor, height: int, width: int) -> np.ndarray:
    """(h, w) floats in [0, 1] -> uint8 (height, width), nearest neighbour so that the
    edges between released and frozen pixels stay sharp."""
    resized = F.interpolate(values[None, None].float(), size=(height, width), mode="nearest")[0, 0]
    return (resized * 255).round().clamp(0, 255).to(torch.uint8).numpy()


def labelled(panel: np.ndarray, text: str) -> np.ndarray:
    """``panel`` (H, W, 3) under a white band of LABEL pixels with ``text`` in it, in the
    largest font size up to 12 that fits the width: (H + LABEL, W, 3)."""
    from PIL import Image, ImageDraw, ImageFont

    # Pillow's default font draws a hyphen edge to edge, so that "--grow" reads as one
    # dash: each hyphen is drawn on its own, with a pixel after it.
    pieces = [piece for piece in re.split(r"(-)", text) if piece]
    band = Image.new("RGB", (panel.shape[1], LABEL), "white")
    for size in range(12, 5, -1):
        font = ImageFont.load_default(size=size)
        if sum(font.getlength(piece) for piece in pieces) + text.count("-") <= panel.shape[1] - 4:
            break
    draw, left = ImageDraw.Draw(band), 2.0
    for piece in pieces:
        draw.text((left, LABEL // 2), piece, fill="black", font=font, anchor="lm")
        left += font.getlength(piece) + (piece == "-")
    return np.concatenate([np.asarray(band), panel], axis=0)


def strip(
    original: np.ndarray,
    change_map: Any,
    result: np.ndarray,
    keep_map: bool = False,
    decoded: Optional[np.ndarray] = None,
) -> np.ndarray:
    """original | map | [decoded |] result side by side, each under its label:
    uint8 (LABEL + H, n W + (n - 1) GAP, 3) for n panels.

    ``original`` and ``result`` are uint8 (H, W, 3); ``change_map`` is the strength
    (h, w) in [0, 1] at any size (a tensor or an array) (1 = change, shown white). With ``keep_map`` the map
    is shown as the user gave it, white = keep, and labelled so. ``decoded``, the model's
    output before the pixel-space composite, shows what the composite put back.
    """
    height, width = original.shape[:2]
    values = torch.from_numpy(strength_array(change_map)).float()
    grey = F.interpolate(values[None, None], size=(height, width), mode="bilinear", align_corners=False)
    shown = _grey_to_rgb((((1 - grey) if keep_map else grey)[0, 0] * 255).round().clamp(0, 255).to(torch.uint8).numpy())
    panels = [
        (original, "original"),
        (shown, "keep-map: white = keep" if keep_map else "map: white = change"),
        *([(decoded, "decoded (before composite)")] if decoded is not None else []),
        (result, "result"),
    ]
    return side_by_side(panels)


def side_by_side(panels: Sequence[tuple[np.ndarray, str]]) -> np.ndarray:
    """Images (uint8 (H, W, 3), one H) side by side, each under its label, GAP pixels of
    white between them: uint8 (LABEL + H, n W + (n - 1) GAP, 3)."""
    gap = np.full((LABEL + panels[0][0].shape[0], GAP, 3), 255, np.uint8)
    tiles = [labelled(panel, text) for panel, text in panels]
    return np.concatenate([part for panel in tiles for part in (gap, panel)][1:], axis=1)


def mask_grid(masks: Sequence[Tensor], aspect: float, sigmas: Optional[Sequence[float]] = None) -> np.ndarray:
    """The release masks of a run as a grid of tiles, uint8 (rows, columns, 3).

    ``masks`` are (h, w) in [0, 1] (1 = released, white), one per step in order;
    ``aspect`` is the image's width / height, which the tiles keep. With ``sigmas`` (the
    noise level of each step) every tile is labelled with its step number and sigma.
    """
    if sigmas is not None and len(sigmas) != len(masks):
        raise ValueError(f"sigmas must give one noise level per mask: {len(sigmas)} for {len(masks)} masks")
    height, width = (TILE, max(1, round(TILE * aspect))) if aspect <= 1 else (max(1, round(TILE / aspect)), TILE)
    band = 0 if sigmas is None else LABEL
    columns = math.ceil(math.sqrt(len(masks)))
    rows = math.ceil(len(masks) / columns)
    # A colour between tiles, so that the border of an all-white tile shows; the cells
    # after the last tile stay the white background.
    grid = np.full((rows * (band + height + GAP) - GAP, columns * (width + GAP) - GAP, 3), 255, np.uint8)
    corners = [(row * (band + height + GAP), column * (width + GAP))
               for row, column in (divmod(index, columns) for index in range(len(masks)))]
    for top, left in corners:
        grid[max(0, top - GAP) : top + band + height + GAP, max(0, left - GAP) : left + width + GAP] = (200, 60, 60)
    for index, (mask, (top, left)) in enumerate(zip(masks, corners)):
        tile = _grey_to_rgb(_resize_grey(mask, height, width))
        if sigmas is not None:
            tile = labelled(tile, f"step {index + 1}, sigma {sigmas[index]:.3g}")
        grid[top : top + band + height, left : left + width] = tile
    return grid
