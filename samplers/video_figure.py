"""The video figure of docs/video.md: input frames, the map of each frame and the output
frames of an ``edit_video`` run on the built-in model, the video demo's panning clip with
a soft disc of change that moves right as the camera pans::

    python -m samplers.video_figure --out docs/video.png
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from samplers.arguments import figure_command

PROG = "python -m samplers.video_figure"
FRAMES = 9
SHOWN = (0, 4, 8)


def moving_disc(frames: int, side: int) -> np.ndarray:
    """float32 (frames, side, side): a soft disc of change drifting right, 1 inside."""
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    centres = np.linspace(0.35, 0.65, frames) * side
    distance = np.hypot(ys[None] - 0.45 * side, xs[None] - centres[:, None, None])
    radius = 0.22 * side
    return np.clip((radius - distance) / (0.35 * radius) + 1, 0, 1).astype(np.float32)


def figure(steps: int) -> np.ndarray:
    """Rows: input frames | map frames | output frames, at SHOWN; uint8."""
    from kdiff_differential import EditSettings, edit_video
    from kdiff_differential.editing.figures import GAP, labelled
    from kdiff_differential.models.builtin import load_example_clip

    frames = load_example_clip(FRAMES)
    maps = moving_disc(FRAMES, frames.shape[1])
    done = edit_video("builtin", frames, maps, EditSettings(steps=steps, crop="off"), seed=0)
    rows = []
    for name, tiles in (("input", frames), ("map", np.repeat((maps[..., None] * 255).round().astype(np.uint8), 3, axis=-1)),
                        ("output", done.frames)):
        cells = [labelled(tiles[t], f"{name}, frame {t}") for t in SHOWN]
        gap = np.full((cells[0].shape[0], GAP, 3), 255, np.uint8)
        rows.append(np.concatenate([part for cell in cells for part in (cell, gap)][:-1], axis=1))
    space = np.full((GAP, rows[0].shape[1], 3), 255, np.uint8)
    return np.concatenate([part for row in rows for part in (row, space)][:-1], axis=0)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return figure_command(argv, PROG, __doc__.splitlines()[0], "--steps", 20, "sampler steps (default: 20)", figure)


if __name__ == "__main__":
    sys.exit(main())
