"""The video map figure of docs/python.md ("Video latents"): a map per video frame, a disc of
change moving fast to the right, brought to Wan's latent frames (the first frame alone, then
4 frames per latent frame). Each latent frame takes its frames' largest strength; a mean
row below shows what it avoids: the disc diluted, pixels that must change held::

    python -m samplers.video_map_figure --out docs/video-map-pooling.png
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from samplers.arguments import figure_command

PROG = "python -m samplers.video_map_figure"
FRAMES_PER_LATENT = 4
LATENT_FRAMES = 3
VIDEO_FRAMES = FRAMES_PER_LATENT * (LATENT_FRAMES - 1) + 1
BRACKET = 14  # pixels of the band that joins a group of frames to its latent frame


def frame_maps(side: int) -> np.ndarray:
    """float32 (T, side, side): a soft disc of change, 1 at its centre, moving about a third
    of its diameter a frame from left to right."""
    ys, xs = np.mgrid[0:side, 0:side] + 0.5
    radius = side * 0.15
    centres = np.linspace(radius, side - radius, VIDEO_FRAMES)
    distance = np.hypot(ys[None] - side / 2, xs[None] - centres[:, None, None])
    return np.clip((radius - distance) / (radius * 0.5), 0, 1).astype(np.float32)


def columns(side: int, gap: int) -> list[int]:
    """The left edge of each video frame's tile."""
    return [t * (side + gap) for t in range(VIDEO_FRAMES)]


def groups() -> list[range]:
    """The video frames behind each latent frame."""
    return [range(0, 1)] + [range(1 + FRAMES_PER_LATENT * f, 1 + FRAMES_PER_LATENT * (f + 1)) for f in range(LATENT_FRAMES - 1)]


def figure(side: int) -> np.ndarray:
    """video frames' maps | latent frames, largest strength (used) | latent frames, mean (not used); uint8."""
    import torch
    from PIL import Image, ImageDraw

    from kdiff_differential.editing.figures import GAP, LABEL, labelled
    from kdiff_differential.maps.latent import latent_frames

    maps = frame_maps(side)
    largest = latent_frames(torch.from_numpy(maps), LATENT_FRAMES, FRAMES_PER_LATENT).numpy()
    mean = np.stack([maps[list(group)].mean(0) for group in groups()])

    def tile(values: np.ndarray, text: str) -> np.ndarray:
        grey = (values * 255).round().astype(np.uint8)
        return labelled(np.repeat(grey[..., None], 3, axis=2), text)

    lefts = columns(side, GAP)
    width = lefts[-1] + side
    row = LABEL + side
    canvas = np.full((3 * row + 2 * (BRACKET + GAP), width, 3), 255, np.uint8)
    for t, left in enumerate(lefts):
        canvas[:row, left : left + side] = tile(maps[t], f"frame {t}")
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for band, (values, name) in enumerate(((largest, "max"), (mean, "mean"))):
        top = row + band * (row + BRACKET + GAP) + GAP
        for f, group in enumerate(groups()):
            first, last = lefts[group[0]], lefts[group[-1]] + side
            # The bracket: a line under the group's frames, a tick down to its latent frame.
            middle = (first + last) // 2
            draw.line([(first, top + 2), (last - 1, top + 2)], fill=(200, 60, 60), width=2)
            draw.line([(middle, top + 2), (middle, top + BRACKET - 2)], fill=(200, 60, 60), width=2)
            left = min(max(middle - side // 2, 0), width - side)
            frames = f"{group[0]}" if len(group) == 1 else f"{group[0]}-{group[-1]}"
            text = f"latent {f} = {name} {frames}" if name == "max" else f"mean {frames}: not used"
            panel = tile(values[f], text if len(group) > 1 else "latent 0 = frame 0")
            image.paste(Image.fromarray(panel), (left, top + BRACKET))
    return np.asarray(image)


def main(argv: Optional[Sequence[str]] = None) -> int:
    return figure_command(argv, PROG, __doc__.splitlines()[0], "--side", 96, "one frame's side in pixels", figure)


if __name__ == "__main__":
    sys.exit(main())
