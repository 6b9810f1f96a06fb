"""Named change maps, built at any size: ``--map gradient-x`` and friends.

Convention: 1 = change (regenerate fully), 0 = keep.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import torch
from torch import Tensor

from ..choices import PRESETS
from ..errors import InputError



def preset_map(name: str, height: int, width: int) -> Tensor:
    """The preset ``name`` as strengths (height, width), float32 in [0, 1].

    ``gradient-x`` runs from keep at the left edge to change at the right,
    ``gradient-y`` from keep at the top to change at the bottom, ``radial`` from change
    at the centre to keep at the corners; ``full`` changes everything, ``none`` nothing.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
    ys = torch.linspace(0, 1, height).reshape(height, 1).expand(height, width)
    xs = torch.linspace(0, 1, width).reshape(1, width).expand(height, width)
    if name == "gradient-x":
        return xs.clone()
    if name == "gradient-y":
        return ys.clone()
    if name == "radial":
        # Distance from the centre in half-sizes, so the ellipse fits the image; 1 at the corners.
        radius = (((2 * xs - 1) ** 2 + (2 * ys - 1) ** 2) / 2).sqrt()
        return (1 - radius).clamp(0, 1)
    return torch.full((height, width), 1.0 if name == "full" else 0.0)


def resolve_map(
    spec: str, height: int, width: int, keep_map: bool = False, warn: Callable[[str], None] = warnings.warn
) -> Tensor:
    """``spec`` (a preset name or a map image file, white = change, read as
    :func:`~kdiff_differential.files.images.read_map` says) as change strengths
    (height, width), float32 in [0, 1], 1 = change.

    ``keep_map`` reads the file or preset as white = keep. A file of another aspect ratio
    is stretched to fit, and ``warn`` is told so. InputError for anything else.
    """
    from ..files.images import read_map

    if spec in PRESETS:
        strength = preset_map(spec, height, width)
    elif os.path.exists(spec):
        strength = read_map(spec)
        rows, columns = strength.shape
        if abs(columns * height - width * rows) > max(height, width, rows, columns):
            warn(f"the map is {columns}x{rows} but the image {width}x{height}: the map is stretched to fit")
    else:
        raise InputError(f"change_map={spec}: neither an existing file nor a preset ({', '.join(PRESETS)})")
    return 1 - strength if keep_map else strength
