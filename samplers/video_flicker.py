"""Does colour match flicker on a clip? ``python -m samplers.video_flicker``.

Edits the video demo's clip (the example image panned 8 pixels a frame) and the same
image held still, on the built-in model with a feathered disk, and measures the flicker
next to the kept region: the mean frame-to-frame change (8-bit levels, mean over
channels and over the pairs of consecutive frames) of the pixels with 0 < s < 1 (the
feather, where the edit meets kept pixels), after the composite. The model's output
is matched three ways: not at all, with one correction for the whole clip (what
``edit_video`` does), and frame by frame (each frame's own correction, the alternative).
The input's own change in those pixels is the floor a moving clip cannot go under.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from samplers.arguments import steps_table_command

PROG = "python -m samplers.video_flicker"
MATCHES = ("none", "clip", "per frame")


def clips(frames: int = 9) -> dict[str, np.ndarray]:
    """The panning demo clip and its first frame held still, uint8 (T, H, W, 3)."""
    from kdiff_differential.models.builtin import load_example_clip

    pan = load_example_clip(frames)
    return {"pan": pan, "still": np.repeat(pan[:1], frames, axis=0)}


def flicker(frames: np.ndarray, where: np.ndarray) -> float:
    """Mean |frame t+1 - frame t| over the pixels ``where`` (H, W), 8-bit levels."""
    steps = np.abs(np.diff(frames.astype(float), axis=0)).mean(axis=-1)
    return float(steps[:, where].mean())


def measure(steps: int = 10, seeds: Sequence[int] = (0, 1, 2), feather: float = 24) -> dict[str, dict[str, float]]:
    """Flicker per clip (and the input's own, "input"), per way of matching, mean over seeds."""
    from kdiff_differential import EditSettings, edit_video
    from kdiff_differential.stages.color_matching import match_colors
    from kdiff_differential.stages.compositing import composite
    from kdiff_differential.maps.shaping import shape_map

    table: dict[str, dict[str, float]] = {}
    for name, frames in clips().items():
        height, width = frames.shape[1:3]
        rows, columns = np.mgrid[:height, :width]
        disk = ((rows - 100) ** 2 + (columns - 128) ** 2 <= 48**2).astype(np.float64)
        strength = np.asarray(shape_map(disk, feather=feather), dtype=np.float32)
        band = (strength > 0) & (strength < 1)
        row = {"input": flicker(frames, band)}
        for match in MATCHES:
            values = []
            for seed in seeds:
                done = edit_video("builtin", frames, strength, EditSettings(steps=steps, crop="off"), seed=seed)
                decoded = done.decoded
                if match == "clip":
                    decoded = match_colors(decoded, frames, strength)
                elif match == "per frame":
                    decoded = np.stack([match_colors(out, frame, strength) for out, frame in zip(decoded, frames)])
                result = np.stack([composite(frame, out, strength) for frame, out in zip(frames, decoded)])
                values.append(flicker(result, band))
            row[match] = float(np.mean(values))
        table[name] = row
    return table


def lines(steps: int) -> list[str]:
    """The Markdown table of :func:`measure`."""
    table = measure(steps)
    return ["| clip | input | " + " | ".join(f"colour match: {match}" for match in MATCHES) + " |", "|---|---:|" + "---:|" * len(MATCHES),
            *(f"| {name} | {row['input']:.2f} | " + " | ".join(f"{row[match]:.2f}" for match in MATCHES) + " |" for name, row in table.items())]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table; returns the exit status."""
    return steps_table_command(argv, PROG, __doc__.splitlines()[0], lines)


if __name__ == "__main__":
    sys.exit(main())
