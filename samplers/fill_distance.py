"""How far each ``--fill`` lets a region move away from the original: ``python -m samplers.fill_distance``.

Edits the demo image on the built-in model with a square region of one strength through
the command line, once per fill and strength (0.3, 0.5 and 0.75 by default; 0.75 is the
strength of the noise-fill recipe in huggingface/diffusers#7038), and prints the mean
change inside the region and the largest change outside it, in 8-bit levels, as a
Markdown table.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from kdiff_differential.errors import OneLineParser, command_status
from kdiff_differential.stages.fills import FILLS

PROG = "python -m samplers.fill_distance"


def square_map(side: int, level: float) -> np.ndarray:
    """A map (side, side): ``level`` on the middle half of each axis, 0 elsewhere."""
    change = np.zeros((side, side))
    change[side // 4 : 3 * side // 4, side // 4 : 3 * side // 4] = level
    return change


def measure(side: int = 256, level: float = 0.75, steps: int = 10, seed: int = 0) -> dict[str, tuple[float, int]]:
    """For each fill: (mean |result - original| inside the region, max outside it), in
    8-bit levels, of the demo image scaled to ``side`` square on the built-in model."""
    from PIL import Image

    from kdiff_differential.models.builtin import load_example_image
    from samplers.around import run_cli

    image = np.asarray(Image.fromarray(load_example_image()).resize((side, side), Image.LANCZOS))
    change = square_map(side, level)
    inside = change > 0
    table = {}
    for fill in FILLS:
        result, _ = run_cli(image, change, "--fill", fill, "--steps", str(steps), "--seed", str(seed), "--quiet")
        difference = np.abs(result.astype(int) - image.astype(int)).mean(axis=-1)
        table[fill] = (float(difference[inside].mean()), int(np.abs(result.astype(int) - image.astype(int))[~inside].max()))
    return table


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table; returns the exit status."""

    def work() -> None:
        parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
        parser.add_argument("--side", type=int, default=256, help="the demo image's side (default: 256)")
        parser.add_argument("--levels", default="0.3,0.5,0.75", help="the region's strengths (default: 0.3,0.5,0.75)")
        parser.add_argument("--steps", type=int, default=10, help="sampler steps (default: 10)")
        args = parser.parse_args(argv)
        levels = [float(level) for level in args.levels.split(",")]
        tables = [measure(args.side, level, args.steps) for level in levels]
        print("| --fill | " + " | ".join(f"strength {level:g}" for level in levels) + " | largest change outside |")
        print("|---" * (len(levels) + 2) + "|")
        for fill in FILLS:
            outside = max(table[fill][1] for table in tables)
            print(f"| {fill} | " + " | ".join(f"{table[fill][0]:.1f}" for table in tables) + f" | {outside} |")

    return command_status(PROG, work, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
