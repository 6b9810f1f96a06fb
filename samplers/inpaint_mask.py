"""Which inpainting mask keeps a gradient map better: ``python -m samplers.inpaint_mask --model FOLDER``.

Edits :func:`samplers.banding.smooth_scene` with the linear left-to-right map through an
inpainting checkpoint (``--model``: an SD/SDXL inpainting folder), once with each
``--inpaint-mask`` (``fixed``: the map binarised at 0.5 for the whole run; ``released``:
the pixels released by each call), and prints, per sampler and step count, the medians
over the seeds of: banding (samplers/metrics.py; 8-bit levels, lower is smoother), the
largest change of a kept pixel (map 0; 8-bit levels) and the monotonicity of change in
strength (Spearman, 1 is best). Changes are measured in the raw decode (before
compositing) against the decode of the unedited latent, so that the VAE's own
reconstruction error, the same for both masks, is left out.
"""

from __future__ import annotations

import sys
from typing import Optional, Sequence

import numpy as np

from kdiff_differential.errors import OneLineParser, command_status

PROG = "python -m samplers.inpaint_mask"
MODES = ("fixed", "released")
COLUMNS = ("banding", "kept", "monotonicity")


def measure(model: str, samplers: Sequence[str], steps: Sequence[int], seeds: Sequence[int],
            height: int = 64, width: int = 128) -> dict[tuple[str, str, int], dict[str, float]]:
    """(mode, sampler, steps) -> the median over ``seeds`` of each of :data:`COLUMNS`."""
    from kdiff_differential.core.sampling import differential_edit
    from kdiff_differential.models import load_model
    from kdiff_differential.maps.presets import preset_map
    from samplers.banding import smooth_scene
    from samplers.metrics import banding, monotonicity, preserve_max_err
    from samplers.threads import one_thread

    image = smooth_scene(height, width)
    strength = preset_map("gradient-x", height, width)
    fitted = load_model(model, image)
    original, s = fitted.decode(fitted.latent), strength.numpy()
    table = {}
    with one_thread():
        for mode in MODES:
            args = fitted.extra_args("a red cat", "", None, change_map=strength, inpaint_mask=mode)
            for sampler in samplers:
                for count in steps:
                    rows = []
                    for seed in seeds:
                        edit = differential_edit(fitted.denoiser, fitted.latent, strength, sampler=sampler, steps=count,
                                                 seed=seed, extra_args=args)
                        out = fitted.decode(edit.result)
                        rows.append((banding(out, original, s), 255 * preserve_max_err(out, original, s), monotonicity(out, original, s)))
                    table[mode, sampler, count] = dict(zip(COLUMNS, np.median(np.array(rows), axis=0).tolist()))
    return table


def markdown(table: dict[tuple[str, str, int], dict[str, float]]) -> str:
    """One row per (sampler, steps), the two masks' columns side by side."""
    head = [f"{column} {mode}" for column in COLUMNS for mode in MODES]
    lines = ["| sampler | steps | " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(head)]
    for sampler, count in dict.fromkeys((sampler, count) for _, sampler, count in table):
        cells = [f"{table[mode, sampler, count][column]:.2f}" for column in COLUMNS for mode in MODES]
        lines.append(f"| {sampler} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the table; returns the exit status."""
    from kdiff_differential.core.samplers import RANGE_SAMPLERS, SAMPLERS
    from samplers.compare import _list_of, _positive

    listed = [name for name in SAMPLERS if name not in RANGE_SAMPLERS]
    parser = OneLineParser(prog=PROG, description="Banding and kept pixels of the fixed and released inpainting masks.")
    parser.add_argument("--model", required=True, help="an inpainting checkpoint (folder or Hub id)")
    parser.add_argument("--samplers", type=_list_of(str, "samplers", listed), default=["euler", "dpmpp_2m"], help="default: euler,dpmpp_2m")
    parser.add_argument("--steps", type=_list_of(_positive, "whole numbers >= 1"), default=[4, 8, 20], help="default: 4,8,20")
    parser.add_argument("--seeds", type=_list_of(int, "whole numbers"), default=[0, 1, 2], help="default: 0,1,2")

    def work() -> None:
        args = parser.parse_args(argv)
        print(markdown(measure(args.model, args.samplers, args.steps, args.seeds)))

    return command_status(PROG, work, "interrupted")


if __name__ == "__main__":
    sys.exit(main())
