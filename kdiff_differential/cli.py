"""The command line: ``kdiff-differential`` (also ``python -m kdiff_differential``).

Edits an image with a per-pixel change map (white = change) on the built-in model or a
diffusers model (a folder, a Hub id or a single .safetensors file, with LoRAs). With only
``--out`` it runs the demo: the bundled example image and a left-to-right gradient. Bad
input ends the run with one line on stderr and exit status 2; library imports happen
inside ``main``, so that ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

# Only torch-free modules here: --help and argument errors must not wait for torch.
from .choices import CLOCKS, COMPOSITES, CROPS, EXECUTORS, FILLS, PRESETS, RELEASES, SCHEDULES
from .errors import InputError, OneLineParser, command_status
from .files import same_file
from .sampler_table import DEFAULT_STEPS, OWN_STEPS, SAMPLERS, clock_problem, sampler_named

if TYPE_CHECKING:
    import torch

PROG = "kdiff-differential"
DEVICES = ("auto", "cpu", "cuda")
# Above this many steps a run is warned of its cost: an easy typo (--steps 100000) runs for hours.
MANY_STEPS = 1000


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


def _sampler(text: str) -> str:
    try:
        sampler_named(text)  # checked here, read in _check_arguments (an A1111 name may imply the schedule)
        return text
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of whole numbers, such as 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r} names a seed twice")
    return seeds


class _ControlOption(argparse.Action):
    """The repeatable ControlNet group: ``--controlnet`` starts one, and each of
    ``--control-image/-scale/-start/-end`` sets that setting of the last one started
    (``const`` names the setting). The groups collect in ``controls``, a list of dicts."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, value: Any, option: Optional[str] = None) -> None:
        groups = getattr(namespace, self.dest) or []
        setattr(namespace, self.dest, groups)
        if self.const == "source":
            groups.append({"source": value})
        elif not groups:
            parser.error(f"{option} {value}: give --controlnet SOURCE first, then its {option}")
        elif self.const in groups[-1]:
            parser.error(f"{option}: given twice for --controlnet {groups[-1]['source']}")
        else:
            groups[-1][self.const] = value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=PROG,
        description="Differential Diffusion: edit an image with a per-pixel change map (white = change, black = keep).",
        epilog=f"With only --out, runs the demo on a bundled image with the gradient-x map. Map presets: {', '.join(PRESETS)}.",
    )
    parser.add_argument("--image", help="input image, or a folder of images with --out a folder (default: the bundled example)")
    parser.add_argument("--map", default=None, help="change map: an image file (grey levels in the file's own range: 8/16-bit, float 0..1; colour as luminance, alpha over black) or a preset (default: gradient-x; with --map-prompt, full)")
    parser.add_argument("--out", required=True, help="output image; .png, .jpg, .webp, ...")
    # The model: where it comes from and what is added to it (see models/sources.py, models/loras.py).
    from .models.families import INPAINT_MASK, INPAINT_MASKS, supported

    parser.add_argument("--model", default="builtin", metavar="SOURCE", help=f"'builtin' (default); a diffusers folder; a Hugging Face Hub id org/name[@revision] (cached; HF_HUB_OFFLINE=1 uses the cache only); or a single .safetensors checkpoint. Families: {supported()}")
    parser.add_argument("--config", metavar="SOURCE", help="for a single-file --model: a diffusers folder or Hub id with its configuration (and, for a transformer-only file, the other parts; default: diffusers' own for the file's family, from the Hub cache)")
    parser.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]", help="a LoRA (diffusers/peft or kohya layout) fused in at SCALE (default 1; 0: none); repeatable")
    parser.add_argument("--allow-pickle", action="store_true", help="load .ckpt/.pt/.bin files, which are pickles: loading one can run any code inside it; only for files you trust (default: refused)")
    parser.add_argument("--dtype", choices=("fp16", "bf16", "fp32"), help="the weights' dtype (default: fp16 on CUDA, bf16 for SD3/Flux, fp32 on the CPU)")
    parser.add_argument("--offload", action="store_true", help="keep each part of the model on the CPU until it runs (diffusers' model CPU offload): less GPU memory, a little slower")
    parser.add_argument("--vae-tiling", action="store_true", help="encode and decode in overlapping tiles (diffusers' VAE tiling): large images in less memory")
    control = parser.add_argument_group("ControlNets", "repeat the group for several ControlNets at once; each setting applies to the --controlnet before it")
    fraction = _number(float, lambda f: 0 <= f <= 1, "a fraction of the schedule in [0, 1]")
    for flag, key, kind, text in (
        ("--controlnet", "source", str, "a ControlNet: a diffusers folder or Hub id, of the model's family"),
        ("--control-image", "image", str, "its control image (any size, resized to the input's), or canny:PATH for the Canny edges of PATH"),
        ("--control-scale", "scale", _number(float, math.isfinite, "a finite number"), "its conditioning scale (default: 1; 0: not called)"),
        ("--control-start", "start", fraction, "where in the schedule it starts acting (default: 0)"),
        ("--control-end", "end", fraction, "where in the schedule it stops (default: 1; after --control-start)"),
        ("--control-mode", "mode", _number(int, lambda n: n >= 0, "a whole number >= 0"), "for a union ControlNet, the kind of its image: the index of the ControlNet's mode (e.g. xinsir's promax: 3 canny)"),
    ):
        control.add_argument(flag, dest="controls", action=_ControlOption, const=key, type=kind, default=None, metavar=key.upper() if key != "source" else "SOURCE", help=text)
    parser.add_argument("--sampler", default="dpmpp_2m", type=_sampler, metavar="NAME", help=f"k-diffusion sampler: {', '.join(SAMPLERS)}; A1111's names work too ('DPM++ 2M Karras', 'Euler a'), a trailing Karras or Exponential choosing the schedule (default: dpmpp_2m)")
    parser.add_argument("--steps", type=_number(int, lambda n: n >= 1, "a whole number >= 1"), help=f"sampler steps (default: the model's, {DEFAULT_STEPS}; few-step checkpoints: 4; {', '.join(OWN_STEPS)} chooses its own)")
    parser.add_argument("--schedule", default=None, choices=SCHEDULES, metavar="NAME", help=f"noise schedule: {', '.join(SCHEDULES)} (default: karras; for SD3/Flux and few-step folders, model: the folder's own scheduler, as diffusers runs it). The last seven are ComfyUI's, for models with discrete training levels")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_number(int, lambda n: True, "a whole number"), default=0, help="random seed (default: 0)")
    seeds.add_argument("--seeds", type=_seeds, metavar="N,N,...", help="several seeds in one run: one output per seed, OUT-seedN")
    parser.add_argument("--strength", type=_number(float, lambda s: 0 <= s <= 1, "a number in [0, 1]"), default=1.0, help="1: release pixels fully; below 1 blends the map itself into the release mask, a gentler edit (default: 1)")
    parser.add_argument("--release", default="faithful", choices=RELEASES, help="faithful: ease each pixel in over the step before its release, no bands, each strength changing about as much as in a converged edit (default); smooth: the same ease linear in the clock, which changes more than asked at few steps; binary: ComfyUI's rule, one band per step")
    parser.add_argument("--compat", choices=("comfyui", "diffusers"), help="follow another tool's rule exactly: ComfyUI's node, or the diffusers Differential Diffusion pipelines' (SDXL/SD3 pre-blend, Flux.1/Z-Image post-blend; docs/peers.md)")
    parser.add_argument("--clock", default=None, choices=CLOCKS, help="the clock that releases pixels (default: timestep)")
    parser.add_argument("--threshold", choices=CLOCKS, help=argparse.SUPPRESS)  # the old name of --clock
    parser.add_argument("--keep-map", action="store_true", help="read the map as white = keep, black = change")
    parser.add_argument("--denoise", type=_number(float, lambda d: 0 < d <= 1, "a number in (0, 1]"), default=1.0, help="global denoise: the part of the schedule to run (default: 1)")
    parser.add_argument("--prompt", default="", help="text prompt (Stable Diffusion)")
    parser.add_argument("--negative", default="", help="negative prompt (Stable Diffusion)")
    parser.add_argument("--cfg", type=_number(float, math.isfinite, "a finite number"), default=None, help="classifier-free guidance scale (default: the model family's: 7; Flux.1 dev: its guidance input, 3.5; FLUX.1 Fill 30; Chroma 5; Qwen-Image 4; Z-Image 6; FLUX.2 Klein base 4; few-step and distilled models: 1)")
    parser.add_argument("--inpaint-mask", default=None, choices=INPAINT_MASKS, help=f"an inpainting network's mask channel: fixed (the map binarised at 0.5, the whole run) or released (the pixels released by each call); default: {INPAINT_MASK}")
    parser.add_argument("--composite", default="difference", choices=COMPOSITES, help="put the original back in pixel space: difference (where the model barely changed it; default), mask (the map as opacity) or none")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when there is one (default: auto)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no messages")
    parser.add_argument("--save-strip", action="store_true", help="also write OUT-strip: original | map | decoded (the model's output before the composite) | result")
    parser.add_argument("--save-masks", action="store_true", help="also write OUT-masks: the release mask at each step")
    around = parser.add_argument_group("around the model call", "shape the map before the edit, finish the image after it")
    pixels = _number(float, math.isfinite, "a finite number of pixels")
    at_least_zero = _number(float, lambda n: 0 <= n < math.inf, "a number of pixels >= 0")
    around.add_argument("--grow", type=pixels, default=0.0, metavar="PX", help="dilate the map by PX pixels of the input (grey-level, a disk); negative erodes it (default: 0)")
    around.add_argument("--feather", type=at_least_zero, default=0.0, metavar="PX", help="ramp the map outward over PX pixels; the region keeps its strengths (default: 0)")
    around.add_argument("--blur", type=at_least_zero, default=0.0, metavar="PX", help="blur the map by a Gaussian of PX pixels, after --grow and --feather (default: 0)")
    around.add_argument("--fill", default="original", choices=FILLS, help="what the model sees under the region, blended by the map: the original (default), coloured noise with its statistics, a heavy blur, or its mean colour; kept pixels stay exact")
    around.add_argument("--color-match", action="store_true", help="match the decoded region's colours (CIELAB mean and spread) to the original's in the transition band, before the composite")
    around.add_argument("--crop", default="auto", choices=CROPS, help="auto: when the change covers a small part of the image, run the model on its box plus padding, at the model's resolution, and paste it back (default: auto)")
    around.add_argument("--crop-padding", type=_number(float, lambda n: 0 <= n < math.inf, "a number >= 0"), default=0.25, metavar="F", help="context around the change's box, as a fraction of its longer side, at least 16 px (default: 0.25)")
    around.add_argument("--executor", default="local", choices=EXECUTORS, help="with --image a folder: run the images here one after another (default) or on a Ray cluster")
    around.add_argument("--address", default=None, help="with --executor ray: the cluster's address (default: start one on this machine)")
    around.add_argument("--map-prompt", default=None, metavar="TEXT", help="also a map from text: how much each pixel matches TEXT (CLIPSeg), multiplied with --map; needs --segmenter")
    around.add_argument("--segmenter", default=None, metavar="SOURCE", help="the CLIPSeg model for --map-prompt: a folder saved by save_pretrained, or a Hub id in the local cache")
    return parser


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _sibling(out: Path, tag: str) -> Path:
    """OUT-tag.ext beside OUT: where --save-strip and --save-masks write."""
    return out.with_name(f"{out.stem}-{tag}{out.suffix}")


def _outputs(args: argparse.Namespace) -> dict[int, Path]:
    """Per seed, the result file: OUT, or OUT-seedN for each of --seeds."""
    out = Path(args.out)
    if args.seeds is None:
        return {args.seed: out}
    return {seed: _sibling(out, f"seed{seed}") for seed in args.seeds}


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
    outputs: dict[str, Path] = {}
    for result in _outputs(args).values():
        outputs[f"--out ({result.name})"] = result
        outputs.update({"--save-strip": _sibling(result, "strip")} if args.save_strip else {})
        outputs.update({"--save-masks": _sibling(result, "masks")} if args.save_masks else {})
    # No input is ever written over, however its path is spelled.
    inputs = {"--image": args.image, "--map": None if args.map in PRESETS else args.map}
    for flag, path in outputs.items():
        for name, given in inputs.items():
            if given is not None and same_file(path, given):
                raise InputError(f"{flag.split()[0]} would write {path}, over the input {name} {given}; give --out another name")
    return list(outputs.values())


def _check_arguments(args: argparse.Namespace) -> None:
    """What argparse cannot check alone: the clock's old name, the clock against the
    sampler, a sampler that chooses its own steps, a step count that would run for hours."""
    if args.threshold is not None:
        _warn("--threshold is deprecated and will be removed: it is now --clock")
        if args.clock is not None and args.clock != args.threshold:
            raise InputError(f"--clock {args.clock} and --threshold {args.threshold} disagree; give --clock alone")
        args.clock = args.threshold
    args.clock = args.clock or "timestep"
    sampler, implied = sampler_named(args.sampler)
    args.sampler = sampler.name
    problem = clock_problem(sampler, args.clock)
    if problem:
        raise InputError(f"--clock {args.clock}: {problem}")
    if args.compat == "diffusers" and sampler.takes_range:
        raise InputError(f"--compat diffusers releases by step index: --sampler {sampler.name} runs a noise range, not a schedule")
    if args.compat == "diffusers" and args.strength != 1:
        raise InputError(f"--compat diffusers: the pipelines have no blend strength; --strength must be 1, got {args.strength:g}")
    if implied is not None:
        if args.schedule is not None and args.schedule != implied:
            raise InputError(f"--sampler names the {implied} schedule and --schedule says {args.schedule}; give one")
        args.schedule = implied
    if sampler.own_steps and args.steps is not None:
        _warn(f"--sampler {sampler.name} chooses its own steps: --steps {args.steps} is ignored")
        args.steps = None
    if args.steps is not None and args.steps > MANY_STEPS:
        calls = args.steps * max(sampler.calls_per_step, 1)
        _warn(
            f"--steps {args.steps} makes {calls} model calls ({calls // (DEFAULT_STEPS * max(sampler.calls_per_step, 1))}x "
            f"the default {DEFAULT_STEPS} steps' time); results stop improving long before {MANY_STEPS}"
        )


def _model_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options as load_model's keywords, checked before any work."""
    from .models.loras import check_loras, parse_lora

    given = {"--config": args.config, "--lora": args.lora, "--dtype": args.dtype, "--offload": args.offload, "--vae-tiling": args.vae_tiling}
    if args.model == "builtin" and any(given.values()):
        flags = ", ".join(flag for flag, value in given.items() if value)
        raise InputError(f"{flags}: for a diffusers model (--model: a folder, Hub id or .safetensors file); the built-in model takes none")
    loras = check_loras([parse_lora(text) for text in args.lora], args.allow_pickle)
    options = {"config": args.config, "loras": loras, "allow_pickle": args.allow_pickle}
    return {**options, "dtype": args.dtype, "offload": args.offload, "vae_tiling": args.vae_tiling}


def _controls(args: argparse.Namespace) -> list[Any]:
    """The ControlNet groups as Controls with their images read, checked before any model loads."""
    from .models.controlnets import Control

    groups = args.controls or []
    if groups and args.model == "builtin":
        raise InputError("--controlnet needs --model (a diffusers folder, Hub id or .safetensors file): the built-in model takes none")
    controls = []
    for group in groups:
        if "image" not in group:
            raise InputError(f"--controlnet {group['source']}: no --control-image for it; give --control-image IMAGE after it")
        settings = {key: group[key] for key in ("scale", "start", "end", "mode") if key in group}
        controls.append(Control(Control(group["image"]).pixels(), **settings))
    return controls


def _device(name: str) -> "torch.device":
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu (or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def run(args: argparse.Namespace) -> list[Path]:
    """Do the edit ``args`` describes; returns the files written."""
    _check_arguments(args)
    from .segmentation import check_prompt_options

    check_prompt_options(args.map_prompt, args.segmenter)
    if args.map is None:
        args.map = "full" if args.map_prompt is not None else "gradient-x"
    if args.image is not None and Path(args.image).is_dir():
        from .folders import run_folder

        return run_folder(args, run, PRESETS, _warn, args.address)
    written = _check_outputs(args)
    options = _model_options(args)
    controls = _controls(args)
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
    if args.map_prompt is not None:
        from .segmentation import prompt_map

        strength = prompt_map(image, args.map_prompt, args.segmenter, device=device, change_map=strength, quiet=True)
    from .preparation import prepare_map

    strength = prepare_map(strength, grow=args.grow, feather=args.feather, blur=args.blur, size=(height, width))
    if args.model == "builtin" and (args.prompt or args.negative or args.cfg is not None):
        _warn("the built-in model takes no text: --prompt, --negative and --cfg are ignored")
    if args.model == "builtin" and args.inpaint_mask is not None:
        raise InputError(f"--inpaint-mask {args.inpaint_mask}: the built-in model has no inpainting channels")
    inpaint = {} if args.inpaint_mask is None else {"inpaint_mask": args.inpaint_mask}

    from .edit import differential_edit
    from .models import default_schedule, load_model

    # Checked before the model loads, which can take minutes.
    own = default_schedule(args.model, config=options["config"], allow_pickle=options["allow_pickle"])
    schedule = args.schedule or own
    if own == "model" and schedule != "model":
        raise InputError(f"--schedule {schedule}: this flow model's schedule starts at t = 1 (sigma = inf); use --schedule model")
    if own == "model" and args.clock == "sigma" and args.denoise >= 1:
        raise InputError("--clock sigma: a flow model's schedule from t = 1 starts at sigma = inf, where log sigma has no range; use --clock timestep or step")
    from .cropping import native_side, plan_crop
    from .fills import fill_pixels

    region = plan_crop(strength, args.crop, args.crop_padding, lambda: native_side(args.model, config=options["config"], allow_pickle=options["allow_pickle"]), size=(height, width))
    if region.cropped and not args.quiet:
        print(f"{PROG}: {region.describe()}", file=sys.stderr)
    box_image, box_strength = region.cut(image), region.cut_map(strength)
    controlnets = [group["source"] for group in args.controls or []]
    # Kept loaded: a folder's images run one after another in this process.
    model = load_model(args.model, region.to_work(fill_pixels(box_image, box_strength, args.fill, args.seed)), device, keep=True,
                       controlnets=controlnets, **options)
    controls = [replace(control, image=region.align(control.pixels())) for control in controls]
    if model.description and not args.quiet:
        print(f"{PROG}: model: {model.description}", file=sys.stderr)
    # A few-step folder's own schedule is known once it is loaded.
    schedule = args.schedule or getattr(model, "schedule", schedule)
    # The model family's own step count where none is given (a sampler choosing its own takes None).
    steps = args.steps if args.steps is not None or args.sampler in OWN_STEPS else getattr(model, "steps", None)
    control: dict[str, Any] = {}
    if controls:
        from .schedules import make_sigmas

        # The windows are fractions of the schedule differential_edit will run (range samplers: of the same steps').
        control = {"controls": controls, "sigmas": make_sigmas(model.denoiser, steps or DEFAULT_STEPS, schedule, args.denoise)}
    extra_args = model.extra_args(args.prompt, args.negative, args.cfg, change_map=box_strength, **inpaint, **control)
    from .compositing import composite

    for seed, out in _outputs(args).items():
        edit = differential_edit(
            model.denoiser,
            model.latent,
            box_strength,
            sampler=args.sampler,
            steps=steps,
            schedule=schedule,
            denoise=args.denoise,
            seed=seed,
            strength=args.strength,
            clock=args.clock,
            release=args.release,
            compat=args.compat,
            extra_args=extra_args,
            progress=not args.quiet and sys.stderr.isatty(),
        )
        raw = region.from_work(model.decode(edit.result))
        if args.color_match:
            from .color_matching import match_colors

            raw = match_colors(raw, box_image, box_strength)
        result = region.paste(image, composite(box_image, raw, box_strength, args.composite))
        write_image(result, str(out))
        if args.save_strip:
            from .figures import strip

            decoded = region.paste(image, raw) if args.composite != "none" else None
            figure = strip(image, strength, result, keep_map=args.keep_map, decoded=decoded)
            write_image(figure, str(_sibling(out, "strip")))
        if args.save_masks:
            from .figures import mask_grid

            masks = [edit.wrapper.mask(sigma)[0, 0].cpu() for sigma in edit.step_sigmas]
            write_image(mask_grid(masks, region.width / region.height, edit.step_sigmas), str(_sibling(out, "masks")))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point; returns the exit status."""

    def work() -> None:
        args = build_parser().parse_args(argv)
        written = run(args)
        if not args.quiet:
            for path in written:
                print(f"wrote {path}")

    return command_status(PROG, work, "interrupted; nothing was written over")
