"""The command line: ``kdiff-differential`` (also ``python -m kdiff_differential``).

Edits an image with a per-pixel change map (white = change) on the built-in model or a
local diffusers Stable Diffusion directory. With only ``--out`` it runs the demo: the
bundled example image and a left-to-right gradient. Bad input ends the run with one
line on stderr and exit status 2; library imports happen inside ``main``, so that
``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from .clocks import CLOCKS
from .compositing import COMPOSITES
from .denoiser import RELEASES
from .edit import DEFAULT_STEPS, OWN_STEPS, RANGE_SAMPLERS, SAMPLERS, SCHEDULES
from .errors import InputError, OneLineParser, command_status
from .files import same_file
from .presets import PRESETS

if TYPE_CHECKING:
    import torch

PROG = "kdiff-differential"
DEVICES = ("auto", "cpu", "cuda")


def _number(kind: Callable[[str], float], check: Callable[[float], bool], requirement: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {requirement}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"{text} is out of range: give {requirement}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Differential Diffusion: edit an image with a per-pixel change map (white = change, black = keep).",
        epilog=f"With only --out, runs the demo on a bundled image with the gradient-x map. Map presets: {', '.join(PRESETS)}.",
    )
    parser.add_argument("--image", help="input image (default: the bundled example)")
    parser.add_argument("--map", default="gradient-x", help="change map: an image file (grey levels in the file's own range: 8/16-bit, float 0..1; colour as luminance, alpha over black) or a preset (default: gradient-x)")
    parser.add_argument("--out", required=True, help="output image; .png, .jpg, .webp, ...")
    parser.add_argument("--model", default="builtin", help="'builtin' or a local diffusers folder: SD 1.x/2.x or SDXL (text-to-image or inpainting), SD3/SD3.5 or Flux.1")
    parser.add_argument("--sampler", default="dpmpp_2m", choices=SAMPLERS, metavar="NAME", help=f"k-diffusion sampler: {', '.join(SAMPLERS)}")
    parser.add_argument("--steps", type=_number(int, lambda n: n >= 1, "a whole number >= 1"), help=f"sampler steps (default: {DEFAULT_STEPS}; {', '.join(OWN_STEPS)} chooses its own)")
    parser.add_argument("--schedule", default=None, choices=SCHEDULES, help="noise schedule (default: karras; for SD3/Flux, model: their own shifted schedule)")
    parser.add_argument("--seed", type=_number(int, lambda n: True, "a whole number"), default=0, help="random seed (default: 0)")
    parser.add_argument("--strength", type=_number(float, lambda s: 0 <= s <= 1, "a number in [0, 1]"), default=1.0, help="1: binary release; below 1 blends the map into the mask (default: 1)")
    parser.add_argument("--release", default="smooth", choices=RELEASES, help="smooth: ease each pixel in over the step before its release, no bands (default); binary: the paper's and ComfyUI's rule")
    parser.add_argument("--threshold", default="timestep", choices=CLOCKS, help="the clock that releases pixels (default: timestep)")
    parser.add_argument("--keep-map", action="store_true", help="read the map as white = keep, black = change")
    parser.add_argument("--denoise", type=_number(float, lambda d: 0 < d <= 1, "a number in (0, 1]"), default=1.0, help="global denoise: the part of the schedule to run (default: 1)")
    parser.add_argument("--prompt", default="", help="text prompt (Stable Diffusion)")
    parser.add_argument("--negative", default="", help="negative prompt (Stable Diffusion)")
    parser.add_argument("--cfg", type=_number(float, math.isfinite, "a finite number"), default=None, help="classifier-free guidance scale (default: the model's, 7; Flux.1 dev: its guidance input, 3.5)")
    parser.add_argument("--composite", default="difference", choices=COMPOSITES, help="put the original back in pixel space: difference (where the model barely changed it; default), mask (the map as opacity) or none")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when there is one (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no messages")
    parser.add_argument("--save-strip", action="store_true", help="also write OUT-strip: original | map | result")
    parser.add_argument("--save-masks", action="store_true", help="also write OUT-masks: the release mask at each step")
    return parser


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _sibling(out: Path, tag: str) -> Path:
    """OUT-tag.ext beside OUT: where --save-strip and --save-masks write."""
    return out.with_name(f"{out.stem}-{tag}{out.suffix}")


def _check_outputs(args: argparse.Namespace) -> list[Path]:
    """The files this run will write, checked before any work is done."""
    from .images import output_format

    out = Path(args.out)
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"--out {args.out}: the folder {folder} does not exist; create it or write elsewhere")
    if out.is_dir():
        raise InputError(f"--out {args.out} is a folder; give a file name such as result.png")
    output_format(args.out)
    outputs = {"--out": out}
    outputs.update({"--save-strip": _sibling(out, "strip")} if args.save_strip else {})
    outputs.update({"--save-masks": _sibling(out, "masks")} if args.save_masks else {})
    # No input is ever written over, however its path is spelled.
    inputs = {"--image": args.image, "--map": None if args.map in PRESETS else args.map}
    for flag, path in outputs.items():
        for name, given in inputs.items():
            if given is not None and same_file(path, given):
                raise InputError(f"{flag} would write {path}, over the input {name} {given}; give --out another name")
    return list(outputs.values())


def _device(name: str) -> "torch.device":
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu (or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def run(args: argparse.Namespace) -> list[Path]:
    """Do the edit ``args`` describes; returns the files written."""
    outputs = _check_outputs(args)
    device = _device(args.device)
    from .images import read_image, write_image

    if args.image is None:
        from .models.builtin import load_example_image

        image = load_example_image()
    else:
        image = read_image(args.image)
    height, width = image.shape[:2]
    from .presets import resolve_map

    strength = resolve_map(args.map, height, width, args.keep_map, warn=_warn)
    if args.model == "builtin" and (args.prompt or args.negative or args.cfg is not None):
        _warn("the built-in model takes no text: --prompt, --negative and --cfg are ignored")
    if args.sampler in RANGE_SAMPLERS and args.threshold == "step":
        raise InputError(f"--threshold step counts schedule steps, and --sampler {args.sampler} runs a sigma range without them; use --threshold timestep or sigma")
    if args.sampler in OWN_STEPS and args.steps is not None:
        _warn(f"--sampler {args.sampler} chooses its own steps: --steps {args.steps} is ignored")

    from .edit import differential_edit

    from .models import default_schedule, load_model

    # Checked before the model loads, which can take minutes.
    own = default_schedule(args.model)
    schedule = args.schedule or own
    if own == "model" and schedule != "model":
        raise InputError(f"--schedule {schedule}: this flow model's schedule starts at t = 1 (sigma = inf); use --schedule model")
    if own == "model" and args.threshold == "sigma" and args.denoise >= 1:
        raise InputError("--threshold sigma: a flow model's schedule from t = 1 starts at sigma = inf, where log sigma has no range; use --threshold timestep or step")
    model = load_model(args.model, image, device)
    if getattr(model, "description", None) and not args.quiet:
        print(f"{PROG}: model: {model.description}", file=sys.stderr)
    edit = differential_edit(
        model.denoiser,
        model.latent,
        strength,
        sampler=args.sampler,
        steps=None if args.sampler in OWN_STEPS else args.steps,
        schedule=schedule,
        denoise=args.denoise,
        seed=args.seed,
        strength=args.strength,
        clock=args.threshold,
        release=args.release,
        extra_args=model.extra_args(args.prompt, args.negative, args.cfg, change_map=strength),
        progress=not args.quiet and sys.stderr.isatty(),
    )
    from .compositing import composite

    raw = model.decode(edit.result)
    result = composite(image, raw, strength, args.composite)
    write_image(result, str(outputs[0]))
    if args.save_strip:
        from .figures import strip

        decoded = raw if args.composite != "none" else None
        figure = strip(image, strength, result, keep_map=args.keep_map, decoded=decoded)
        write_image(figure, str(_sibling(outputs[0], "strip")))
    if args.save_masks:
        from .figures import mask_grid

        masks = [edit.wrapper.mask(sigma)[0, 0].cpu() for sigma in edit.step_sigmas]
        write_image(mask_grid(masks, width / height, edit.step_sigmas), str(_sibling(outputs[0], "masks")))
    return outputs


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point; returns the exit status."""

    def work() -> None:
        args = build_parser().parse_args(argv)
        written = run(args)
        if not args.quiet:
            for path in written:
                print(f"wrote {path}")

    return command_status(PROG, work, "interrupted; nothing was written over")
