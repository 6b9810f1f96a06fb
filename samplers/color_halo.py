"""Does ``--color-match`` touch what the map barely changes? ``python -m samplers.color_halo``.

Edits two scenes on the built-in model through the command line (the demo photo with a
disk over the face, the banding benchmark's smooth landscape with a disk over a hill),
each with a binary disk feathered by ``--feather``, with and without ``--color-match``, and
prints as a Markdown table the mean change from the input (8-bit levels, mean over
channels) in bands of the prepared strength s: (0, 1e-3] (barely touched), (1e-3, 0.1]
(the outer feather) and (0.1, 1) (the rest of the transition band). The built-in model
decodes no colour cast, so whatever ``--color-match`` adds in the low bands is a halo.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from kdiff_differential.errors import OneLineParser, command_status

PROG = "python -m samplers.color_halo"
BANDS = ((0.0, 1e-3), (1e-3, 0.1), (0.1, 1.0))


def scenes() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each scene's image, uint8 (H, W, 3), and binary disk map, float (H, W)."""
    from kdiff_differential.models.builtin import load_example_image
    from samplers.banding import smooth_scene

    def disk(height: int, width: int, row: int, column: int, radius: int) -> np.ndarray:
        rows, columns = np.mgrid[:height, :width]
        return ((rows - row) ** 2 + (columns - column) ** 2 <= radius**2).astype(np.float64)

    photo, landscape = load_example_image(), smooth_scene(192, 384)
    return {"demo photo": (photo, disk(*photo.shape[:2], 80, 120, 40)),
            "landscape": (landscape, disk(192, 384, 140, 200, 36))}


def measure(feather: float = 24, steps: int = 10) -> dict[tuple[str, bool], list[float]]:
    """Mean change per strength band (BANDS), keyed by (scene, colour match)."""
    from kdiff_differential.maps.shaping import shape_map
    from samplers.around import run_cli

    table = {}
    for name, (image, change) in scenes().items():
        strength = shape_map(change, feather=feather)
        for matched in (False, True):
            options = ["--steps", str(steps), "--quiet", "--feather", str(feather)] + (["--color-match"] if matched else [])
            result, _ = run_cli(image, change, *options)
            moved = np.abs(result.astype(float) - image.astype(float)).mean(axis=-1)
            table[name, matched] = [float(moved[(strength > low) & (strength <= high) & (strength < 1)].mean())
                                    for low, high in BANDS]
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table; returns the exit status."""

    def work() -> None:
        parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
        parser.add_argument("--feather", type=float, default=24, help="the disk's feather, pixels (default: 24)")
        parser.add_argument("--steps", type=int, default=10, help="sampler steps (default: 10)")
        args = parser.parse_args(argv)
        table = measure(args.feather, args.steps)
        print("| scene | --color-match | " + " | ".join(f"s in ({low:g}, {high:g}{')' if high == 1 else ']'}" for low, high in BANDS) + " |")
        print("|---|---|" + "---:|" * len(BANDS))
        for (name, matched), changes in table.items():
            print(f"| {name} | {'on' if matched else 'off'} | " + " | ".join(f"{value:.1f}" for value in changes) + " |")

    return command_status(PROG, work, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
