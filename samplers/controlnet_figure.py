"""The ControlNet figure of docs/models.md: one edit without and with a ControlNet, on tiny random
modules (a Stable Diffusion 1.x pipeline and a ControlNet for it, built as the tests build
them: random weights, nothing downloaded). A random ControlNet draws no edges; the figure
shows the mechanism: what the ControlNet changes lies where the map lets pixels change,
and the kept pixels are the input's. Both runs go through the command line::

    python -m samplers.controlnet_figure --out docs/controlnet-tiny-random.png
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from samplers.arguments import figure_command

PROG = "python -m samplers.controlnet_figure"
TESTS = Path(__file__).resolve().parents[1] / "tests"


def figure(size: int, folder: Path) -> np.ndarray:
    """original | map | control image | without | with | |difference| x4, uint8."""
    from PIL import Image

    from kdiff_differential.cli import main
    from kdiff_differential.editing.figures import side_by_side
    from kdiff_differential.files.images import read_image
    from kdiff_differential.models.builtin import load_example_image
    from kdiff_differential.models.controlnets import canny_edges

    sys.path.insert(0, str(TESTS))
    from conftest import save_tiny_controlnet, save_tiny_sd  # the tests' tiny random modules

    model = save_tiny_sd(folder, "epsilon")
    controlnet = save_tiny_controlnet(folder / "controlnet", model, seed=3)
    image = np.asarray(Image.fromarray(load_example_image()).resize((size, size), Image.LANCZOS))
    Image.fromarray(image).save(folder / "in.png")
    # A soft disc of change in the middle, kept (0) outside it.
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1) - 0.5
    strength = np.clip((0.4 - np.hypot(ys, xs)) / 0.15, 0, 1)
    Image.fromarray((strength * 255).round().astype(np.uint8)).save(folder / "map.png")
    common = ["--model", str(model), "--image", str(folder / "in.png"), "--map", str(folder / "map.png"), "--prompt", "a red cat",
              "--steps", "8", "--sampler", "euler", "--quiet"]
    outputs = {}
    for name, extra in (("without", []), ("with", ["--controlnet", str(controlnet), "--control-image", f"canny:{folder / 'in.png'}"])):
        if main([*common, *extra, "--out", str(folder / f"{name}.png")]) != 0:
            raise RuntimeError(f"the run {name} the ControlNet failed")
        outputs[name] = read_image(str(folder / f"{name}.png"))
    shown = np.repeat(read_image(str(folder / "map.png"))[..., :1], 3, axis=2)
    difference = (np.abs(outputs["with"].astype(int) - outputs["without"]) * 4).clip(0, 255).astype(np.uint8)
    return side_by_side([
        (image, "original"), (shown, "map: white = change"), (canny_edges(image), "control: canny"),
        (outputs["without"], "without ControlNet"), (outputs["with"], "random ControlNet"), (difference, "|difference| x4"),
    ])


def main(argv: Optional[Sequence[str]] = None) -> int:
    def draw(size: int) -> np.ndarray:
        with tempfile.TemporaryDirectory() as folder:
            return figure(size, Path(folder))

    return figure_command(argv, PROG, __doc__.splitlines()[0], "--size", 128, "the image's side in pixels", draw)


if __name__ == "__main__":
    sys.exit(main())
