"""How much of each ``--fill`` survives into the result: ``python -m samplers.fill_residue``.

Edits the demo image on the built-in model through the command line with a disk over
the face, ``--feather 32`` (so the map takes every strength between 0 and 1), once per
fill, and prints as a Markdown table the fill's *residue* in bands of strength: the RMS
(8-bit levels, over pixels and channels) of the high-pass of the result minus the result
with ``--fill original`` at the same seed, the high-pass being the difference minus its
Gaussian blur of 1.5 pixels. A fill that the model regenerated over leaves only the
sampler's own variation, which the row ``original, seed 1`` (the plain edit at another
seed) measures. The last column is the mean change from the input where s = 1, in
8-bit levels: how far the fill lets a fully changed region move.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from samplers.arguments import steps_table_command
from kdiff_differential.stages.fills import FILLS

PROG = "python -m samplers.fill_residue"
BANDS = ((0.0, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.0))
FEATHER = 32


def high_pass(difference: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return difference - gaussian_filter(difference, (sigma, sigma, 0), mode="nearest")


def measure(steps: int = 10) -> dict[str, list[float]]:
    """Each row (a fill, or ``original, seed 1``): the residue per band of BANDS, then
    the mean change where s = 1."""
    from kdiff_differential.maps.shaping import shape_map
    from samplers.around import _example, run_cli

    image, change = _example()
    strength = shape_map(change, feather=FEATHER)

    def edit(fill: str, seed: int) -> np.ndarray:
        options = ["--steps", str(steps), "--quiet", "--feather", str(FEATHER), "--fill", fill, "--seed", str(seed)]
        return run_cli(image, change, *options)[0].astype(float)

    plain = edit("original", 0)
    rows = {"original, seed 1": edit("original", 1)}
    rows.update({fill: edit(fill, 0) for fill in FILLS if fill != "original"})
    table = {}
    for name, result in rows.items():
        residue = high_pass(result - plain) ** 2
        bands = [float(np.sqrt(residue[(strength > low) & (strength <= high) & (strength < 1)].mean())) for low, high in BANDS]
        table[name] = bands + [float(np.abs(result - image).mean(axis=-1)[strength == 1].mean())]
    return table


def lines(steps: int) -> list[str]:
    """The Markdown table of :func:`measure`."""
    table = measure(steps)
    return ["| --fill | " + " | ".join(f"residue, s in ({low:g}, {high:g}{')' if high == 1 else ']'}" for low, high in BANDS)
            + " | change where s = 1 |", "|---|" + "---:|" * (len(BANDS) + 1),
            *(f"| {name} | " + " | ".join(f"{value:.1f}" for value in values) + " |" for name, values in table.items())]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table; returns the exit status."""
    return steps_table_command(argv, PROG, __doc__.splitlines()[0], lines)


if __name__ == "__main__":
    sys.exit(main())
