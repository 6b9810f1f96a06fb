"""The figures of docs/cli.md for what runs around the model call: ``python -m samplers.around --out docs``.

Each figure runs the command line (``kdiff_differential.cli.main``) on the built-in model
and lays the maps and results side by side, labelled: ``grow-feather.png`` (map
preparation), ``fill.png`` (``--fill``), ``crop.png`` (``--crop``).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from kdiff_differential.errors import InputError, OneLineParser, command_status

PROG = "python -m samplers.around"
SIDE = 160  # each panel's side in the figures
GAP = 4


def run_cli(image: np.ndarray, change: np.ndarray, *options: str) -> tuple[np.ndarray, str]:
    """The command line's result for ``image`` and the map ``change`` (float (H, W) in
    [0, 1]) with ``options``, uint8 (H, W, 3), and what it said on stderr."""
    import contextlib
    import io

    from kdiff_differential.cli import main
    from kdiff_differential.files.images import read_image, write_image

    with tempfile.TemporaryDirectory() as folder:
        write_image(image, f"{folder}/in.png")
        write_image((change * 255).round().astype(np.uint8), f"{folder}/map.png")
        said = io.StringIO()
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            status = main(["--image", f"{folder}/in.png", "--map", f"{folder}/map.png", "--out", f"{folder}/out.png",
                           *options])
        if status:
            raise RuntimeError(f"the command line failed: {said.getvalue()}")
        return read_image(f"{folder}/out.png"), said.getvalue()


def _panel(image: np.ndarray, text: str, side: int = SIDE) -> np.ndarray:
    from PIL import Image

    from kdiff_differential.editing.figures import labelled

    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    resized = np.asarray(Image.fromarray(image).resize((side * image.shape[1] // image.shape[0], side), Image.LANCZOS))
    return labelled(resized, text)


def _grid(rows: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Labelled panels of one height in rows, white between them."""
    lines = []
    for row in rows:
        gap = np.full((row[0].shape[0], GAP, 3), 255, np.uint8)
        lines.append(np.concatenate([part for panel in row for part in (gap, panel)][1:], axis=1))
    width = max(line.shape[1] for line in lines)
    lines = [np.pad(line, ((0, GAP), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    return np.concatenate(lines, axis=0)[:-GAP]


def _example() -> tuple[np.ndarray, np.ndarray]:
    """The demo image and a disk-shaped change map over the astronaut's face."""
    from kdiff_differential.models.builtin import load_example_image

    image = load_example_image()
    rows, columns = np.mgrid[: image.shape[0], : image.shape[1]]
    change = ((rows - 80) ** 2 + (columns - 120) ** 2 <= 40**2).astype(np.float64)
    return image, change


def grow_feather_figure() -> np.ndarray:
    """Map preparation: the map as given, grown, shrunk, feathered and blurred (above)
    and the results on the built-in model (below)."""
    from kdiff_differential.maps.shaping import shape_map

    image, change = _example()
    settings = [("map as given", {}), ("--grow 16", {"grow": 16}), ("--grow -16", {"grow": -16}),
                ("--feather 32", {"feather": 32}), ("--blur 12", {"blur": 12})]
    maps, results = [], []
    for label, options in settings:
        prepared = shape_map(change, **options)
        maps.append(_panel((prepared * 255).round().astype(np.uint8), label))
        flags = [part for name, value in options.items() for part in (f"--{name}", str(value))]
        results.append(_panel(run_cli(image, change, "--steps", "10", "--quiet", *flags)[0], "result"))
    return _grid([maps, results])


def fill_figure() -> np.ndarray:
    """Each --fill on the built-in model with a region of strength 1 feathered by 16 px: what the
    model sees (above) and the result (below)."""
    from kdiff_differential.stages.fills import FILLS, fill_pixels
    from kdiff_differential.maps.shaping import shape_map

    image, change = _example()
    change = shape_map(change, feather=16)
    seen, results = [], []
    for fill in FILLS:
        seen.append(_panel(fill_pixels(image, change, fill), f"--fill {fill}: model input"))
        results.append(_panel(run_cli(image, change, "--steps", "10", "--quiet", "--fill", fill)[0], "result"))
    return _grid([seen, results])


def crop_figure() -> np.ndarray:
    """--crop on a 1600x1200 photo with a 200x200 change: the photo with the box the
    model runs on (left), the region with --crop off (the model at 512x384, scaled up) and
    with --crop auto (the model on the box at full resolution)."""
    import re

    from PIL import Image, ImageDraw

    from kdiff_differential.models.builtin import load_example_image

    photo = np.asarray(Image.fromarray(load_example_image()).resize((1600, 1200), Image.BICUBIC))
    change = np.zeros((1200, 1600))
    change[500:700, 700:900] = 1
    cropped, said = run_cli(photo, change, "--steps", "10")
    left, top = map(int, re.search(r"at x (\d+), y (\d+)", said).groups())
    whole, _ = run_cli(photo, change, "--steps", "10", "--quiet", "--crop", "off")
    marked = Image.fromarray(photo)
    ImageDraw.Draw(marked).rectangle([left, top, left + 299, top + 299], outline=(255, 255, 0), width=8)
    ImageDraw.Draw(marked).rectangle([700, 500, 899, 699], outline=(255, 0, 0), width=8)
    zoom = (slice(450, 750), slice(650, 950))
    return _grid([[_panel(np.asarray(marked), "1600x1200: the change (inner), its box (outer)", 240),
                   _panel(whole[zoom], "--crop off: the box, zoomed", 240),
                   _panel(cropped[zoom], "--crop auto: the box, zoomed", 240)]])


FIGURES = {"grow-feather.png": grow_feather_figure, "fill.png": fill_figure, "crop.png": crop_figure}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write the figures into ``--out``; returns the exit status."""

    def work() -> None:
        parser = OneLineParser(prog=PROG, description=__doc__.splitlines()[0])
        parser.add_argument("--out", default="docs", help="the folder to write the figures into (default: docs)")
        parser.add_argument("--only", choices=sorted(FIGURES), help="write this figure only")
        args = parser.parse_args(argv)
        if not Path(args.out).is_dir():
            raise InputError(f"--out {args.out}: no such folder")
        from PIL import Image

        from kdiff_differential.files.atomic import write_atomically

        for name, draw in FIGURES.items():
            if args.only in (None, name):
                # 256 colours keep each figure well under 200 KB; the photos still read well.
                figure = Image.fromarray(draw()).quantize(256, method=Image.Quantize.MEDIANCUT)
                write_atomically(Path(args.out) / name, lambda file: figure.save(file, format="PNG", optimize=True), binary=True)
                print(f"wrote {Path(args.out) / name}")

    return command_status(PROG, work, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
