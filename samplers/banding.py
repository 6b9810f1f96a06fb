"""Banding and fidelity benchmark: ``python -m samplers.banding``.

Edits a smooth synthetic landscape (sky, sun glow, hills; no edges for a band to hide
behind; ``--scene`` gives it mirrored, upside down or recoloured) with a linear left-to-right change map on the built-in model, for each release rule
(faithful, the default; smooth; binary), every sampler that runs a schedule, several
step counts and a few seeds, and prints five Markdown tables (samplers/metrics.py, defined in docs/samplers.md), each titled
with its unit and which way is better: ``banding`` (the largest jump between
neighbouring map levels of the mean change, in 8-bit levels), ``relative_banding`` (the
same of the mean change minus the converged edit's: the bands that are not the content's),
and ``cam``, ``dam`` and
``calibration`` of the edit strength per map level against the converged edit's.
``--release`` also takes the peers' rules (``samplers/peers.py``: ComfyUI's, the diffusers
pipelines' pre- and post-blend, InvokeAI's) as rows beside ours.
``--figure PATH`` also draws the first sampler's edits, one row a release rule and one
column a step count.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from kdiff_differential.core.samplers import RANGE_SAMPLERS, SAMPLERS
from kdiff_differential.errors import InputError, OneLineParser, command_status
from kdiff_differential.files.atomic import write_atomically

from samplers.peers import PEERS, peer_edit

PROG = "python -m samplers.banding"
RELEASES = ("faithful", "smooth", "binary")


def smooth_scene(height: int = 192, width: int = 384) -> np.ndarray:
    """A smooth landscape, uint8 (height, width, 3): a sky graded from deep blue to a hazy
    horizon, a soft sun glow and two rolling hills, with no hard edge anywhere."""
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    sky = np.stack([0.25 + 0.6 * y, 0.45 + 0.45 * y, 0.85 + 0.1 * y], axis=-1) * np.ones((1, width, 1))
    glow = np.exp(-((x - 0.7) ** 2 + (y - 0.25) ** 2) / 0.02)[..., None] * np.array([0.5, 0.4, 0.1])
    picture = sky + glow
    for ridge, colour, softness in ((0.62 + 0.08 * np.sin(5 * x), (0.35, 0.6, 0.3), 0.04),
                                    (0.78 + 0.06 * np.cos(3 * x + 1), (0.2, 0.45, 0.2), 0.05)):
        weight = 1 / (1 + np.exp(-(y - ridge) / softness))  # a smooth step at the ridge line
        picture = picture * (1 - weight[..., None]) + np.array(colour) * weight[..., None]
    return (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)


# The landscape and variants of it that no rule was tuned on: the map then crosses the
# same smooth content in another order, or other colours.
SCENES = {"landscape": lambda image: image, "mirrored": lambda image: image[:, ::-1],
          "upside-down": lambda image: image[::-1], "recoloured": lambda image: image[..., ::-1]}


def scene_image(scene: str = "landscape", height: int = 192, width: int = 384) -> np.ndarray:
    """The scene ``scene`` (one of SCENES), uint8 (height, width, 3)."""
    if scene not in SCENES:
        raise ValueError(f"scene must be one of {', '.join(SCENES)}, got {scene!r}")
    return np.ascontiguousarray(SCENES[scene](smooth_scene(height, width)))


def measure(samplers: Sequence[str], steps: Sequence[int], releases: Sequence[str] = RELEASES,
            seed: int = 0, height: int = 192, width: int = 384,
            images: Optional[dict[tuple[str, str, int], np.ndarray]] = None, scene: str = "landscape") -> dict[tuple[str, str, int], float]:
    """Banding of each (release, sampler, steps) on :func:`scene_image` with a linear
    left-to-right map, on the built-in model. ``images``, when given, receives each edit,
    uint8 (height, width, 3), under the same key."""

    from kdiff_differential.core.sampling import differential_edit
    from kdiff_differential.models.builtin import BuiltinModel
    from kdiff_differential.maps.presets import preset_map
    from samplers.metrics import banding
    from samplers.threads import one_thread

    image = scene_image(scene, height, width)
    strength = preset_map("gradient-x", height, width)
    model = BuiltinModel(image)
    table = {}
    with one_thread():
        for release in releases:
            for sampler in samplers:
                for count in steps:
                    if release in PEERS:
                        result = peer_edit(release, model.denoiser, model.latent, strength, sampler, count, seed)
                    else:
                        result = differential_edit(model.denoiser, model.latent, strength, sampler=sampler, steps=count,
                                                   seed=seed, release=release).result
                    out = model.decode(result)
                    table[release, sampler, count] = banding(out, image, strength.numpy())
                    if images is not None:
                        images[release, sampler, count] = out
    return table


# The converged edit that fidelity is measured against.
REFERENCE = ("euler", 100)


def fidelity_table(samplers: Sequence[str], steps: Sequence[int], releases: Sequence[str] = RELEASES,
                   seeds: Sequence[int] = (0, 1, 2), height: int = 192, width: int = 384,
                   images: Optional[dict[tuple[str, str, int], np.ndarray]] = None,
                   scene: str = "landscape") -> dict[tuple[str, str, int], dict[str, float]]:
    """Per (release, sampler, steps): ``banding`` and ``relative_banding`` (against the
    same seed's converged edit; medians over ``seeds``) and ``cam``, ``dam`` and
    ``calibration`` (samplers/metrics.py) of the edit strength
    measured over ``seeds`` against the converged edit's over the same seeds (Euler, 100
    steps, smooth release; at 100 steps binary is within a level of it). ``images``,
    when given, receives the first seed's edits as :func:`measure` gives them."""
    from kdiff_differential.maps.presets import preset_map
    from samplers.metrics import edit_strength, fidelity, relative_banding

    if not seeds:
        raise ValueError("seeds must name at least one seed, got none")
    name, scene, strength = scene, scene_image(scene, height, width), preset_map("gradient-x", height, width).numpy()
    bandings: dict[tuple[str, str, int], list[float]] = {}
    relatives: dict[tuple[str, str, int], list[float]] = {}
    outs: dict[tuple[str, str, int], list[np.ndarray]] = {}
    references = []
    for seed in seeds:
        edits: dict[tuple[str, str, int], np.ndarray] = {}
        for key, value in measure(samplers, steps, releases, seed, height, width, images=edits, scene=name).items():
            bandings.setdefault(key, []).append(value)
            outs.setdefault(key, []).append(edits[key])
        if images is not None and seed == seeds[0]:
            images.update(edits)
        converged: dict[tuple[str, str, int], np.ndarray] = {}
        measure([REFERENCE[0]], [REFERENCE[1]], ["smooth"], seed, height, width, images=converged, scene=name)
        references.append(converged["smooth", *REFERENCE])
        # The regenerated content depends on the seed, and so do its own jumps.
        for key, out in edits.items():
            relatives.setdefault(key, []).append(relative_banding(out, references[-1], scene, strength))
    reference = edit_strength(references, scene, strength)
    return {key: {"banding": float(np.median(bandings[key])), "relative_banding": float(np.median(relatives[key])),
                  **fidelity(edit_strength(outs[key], scene, strength), reference)}
            for key in outs}


def markdown(table: dict[tuple[str, str, int], float], digits: int = 1) -> str:
    """One row per sampler, one column per (release, steps); values to ``digits`` decimals."""
    releases = list(dict.fromkeys(release for release, _, _ in table))
    samplers = list(dict.fromkeys(sampler for _, sampler, _ in table))
    steps = sorted({count for _, _, count in table})
    head = [f"{release} {count}" for release in releases for count in steps]
    lines = ["| sampler | " + " | ".join(head) + " |", "|---|" + "---:|" * len(head)]
    for sampler in samplers:
        cells = [f"{table[release, sampler, count]:.{digits}f}" for release in releases for count in steps]
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def titles(seeds: Sequence[int]) -> dict[str, str]:
    """Each printed table's title: what it measures, its unit and which way is better."""
    from samplers.metrics import UNITS

    over = f"seeds {', '.join(map(str, seeds))}"
    what = {
        "banding": f"Banding: the largest jump of mean |change| between neighbouring map levels, median over {over}",
        "relative_banding": f"Relative banding: the same of the mean |change| minus the converged edit's "
                            f"({REFERENCE[0]}, {REFERENCE[1]} steps, smooth, same seed), median over {over}",
        "cam": f"CAM: correlation of the edit strength per map level (mean over {over}) with the converged edit's "
               f"({REFERENCE[0]}, {REFERENCE[1]} steps, smooth)",
        "dam": "DAM: min over a, b of the RMS of converged - (a * measured + b), the same curves",
        "calibration": "Calibration: mean |measured - converged| edit strength per map level, the same curves",
    }
    return {name: f"{text}; {UNITS[name][0]}, {UNITS[name][1]}" for name, text in what.items()}


DIGITS = {"banding": 1, "relative_banding": 1, "cam": 3, "dam": 2, "calibration": 1}


def side_by_side(images: dict[tuple[str, str, int], np.ndarray], table: dict[tuple[str, str, int], float]) -> Any:
    """A matplotlib Figure of one sampler's edits: a row per release mode, a column per
    step count, each panel titled with its banding. Not registered with pyplot."""
    from matplotlib.figure import Figure

    releases = list(dict.fromkeys(release for release, _, _ in images))
    steps = sorted({count for _, _, count in images})
    sampler = next(iter(images))[1]
    height, width = next(iter(images.values())).shape[:2]
    figure = Figure(figsize=(3.2 * len(steps), 3.2 * height / width * len(releases) + 0.9))
    axes = figure.subplots(len(releases), len(steps), squeeze=False)
    for row, release in enumerate(releases):
        for column, count in enumerate(steps):
            axis = axes[row, column]
            axis.imshow(images[release, sampler, count])
            axis.set_xticks([])
            axis.set_yticks([])
            axis.set_title(f"{release}, {count} steps: banding {table[release, sampler, count]:.0f}", fontsize=9)
    figure.suptitle(f"{sampler}, map: keep (left) to change (right)", fontsize=10)
    figure.tight_layout()
    return figure


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the banding and fidelity tables; returns the exit status."""
    from samplers.compare import _list_of, _positive

    listed = [name for name in SAMPLERS if name not in RANGE_SAMPLERS]
    parser = OneLineParser(prog=PROG, description="Banding and fidelity (CAM, DAM, calibration) of each release rule "
                                                   "(faithful, the default; smooth; binary) per sampler and step count.")
    parser.add_argument("--samplers", type=_list_of(str, "samplers", SAMPLERS), default=listed, help="default: every schedule sampler")
    parser.add_argument("--steps", type=_list_of(_positive, "whole numbers >= 1"), default=[5, 10, 20], help="default: 5,10,20")
    parser.add_argument("--release", type=_list_of(str, "releases", RELEASES + PEERS), default=list(RELEASES),
                        help=f"default: faithful,smooth,binary; peers: {','.join(PEERS)}")
    parser.add_argument("--seeds", type=_list_of(int, "whole numbers"), default=[0, 1, 2], help="the edit strength is measured over these (default: 0,1,2)")
    parser.add_argument("--scene", choices=list(SCENES), default="landscape", help="the landscape (default) or a variant of it")
    parser.add_argument("--figure", metavar="PATH.png", help="also draw the first sampler's edits (first seed), release modes side by side")

    def work() -> None:
        args = parser.parse_args(argv)
        if args.figure and not Path(args.figure).resolve().parent.is_dir():
            raise InputError(f"--figure {args.figure}: the folder does not exist")
        images: dict = {}
        table = fidelity_table(args.samplers, args.steps, args.release, args.seeds, images=images, scene=args.scene)
        for index, (name, title) in enumerate(titles(args.seeds).items()):
            print(("\n" if index else "") + title + "\n")
            print(markdown({key: values[name] for key, values in table.items()}, DIGITS[name]))
        if args.figure:
            from kdiff_differential.maps.presets import preset_map
            from samplers.metrics import banding

            shown = {key: image for key, image in images.items() if key[1] == args.samplers[0]}
            scene = scene_image(args.scene)
            strength = preset_map("gradient-x", *scene.shape[:2]).numpy()
            figure = side_by_side(shown, {key: banding(image, scene, strength) for key, image in shown.items()})
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=80)
            write_atomically(args.figure, lambda file: file.write(buffer.getvalue()), binary=True)
            print(f"wrote {args.figure}")

    return command_status(PROG, work, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
