"""Named change maps, built at any size: ``--map gradient-x`` and friends.

Convention: 1 = change (regenerate fully), 0 = keep.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..choices import PRESETS


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
