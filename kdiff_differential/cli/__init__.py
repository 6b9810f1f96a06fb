"""The command line: ``kdiff-differential`` (also ``python -m kdiff_differential``).

A thin shell around :func:`~kdiff_differential.edit_image`: parse the flags into its
settings, load the model once, run the edit per image and per seed, write the files.
With only ``--out`` it runs the demo: the bundled example image and a left-to-right
gradient. Bad input ends the run with one line on stderr and exit status 2; this layer
alone speaks of ``--flags``, translating the library's ``name=value`` at its boundary.
Library imports happen inside ``run``, so that ``--help`` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import math
import re
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

# Only torch-free modules here: --help and argument errors must not wait for torch.
from .. import __version__
from ..choices import CLOCKS, COMPAT_NAMES, COMPOSITES, CROPS, EXECUTORS, FILLS, PRESETS, RELEASES, SCHEDULES
from ..errors import InputError, OneLineParser, command_status
from ..files.atomic import same_file
from ..core.samplers import DEFAULT_STEPS, OWN_STEPS, SAMPLERS, sampler_named
from .jobs import Job, ModelSpec, sibling

PROG = "kdiff-differential"
DEVICES = ("auto", "cpu", "cuda")
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)
# The library's names for what a flag gives, where they are not the flag's own name.
RENAMED = {"change_map": "--map", "loras": "--lora", "controlnets": "--controlnet", "controls": "--controlnet"}
CONTROL = ("control_image", "control_scale", "control_start", "control_end", "control_mode")


def as_flags(message: str) -> str:
    """A library message in the command line's words: each ``name=`` of a setting, the
    model or its options becomes ``--name `` (``grow=1e9`` reads ``--grow 1e9``)."""
    from ..editing.image_edit import setting_names

    names = {**{name: f"--{name.replace('_', '-')}" for name in (*setting_names(), *CONTROL, "model", "image")}, **RENAMED}
    pattern = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    # name=value reads "--name value"; a bare name= (no value) reads "--name".
    message = re.sub(rf"(?<![\w.-])({pattern})=(?=[\s,:;)]|$)", lambda match: names[match[1]], message)
    return re.sub(rf"(?<![\w.-])({pattern})=", lambda match: f"{names[match[1]]} ", message)


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


class _Parser(OneLineParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        if "required: --out" in message:
            message += f" (`{PROG} --out result.png` runs the demo; --help lists the options)"
        super().error(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Differential Diffusion: edit an image with a per-pixel change map (white = change, black = keep).",
        epilog=f"With only --out, runs the demo on a bundled image with the gradient-x map. Map presets: {', '.join(PRESETS)}.",
    )
    parser.add_argument("--image", help="input image; a video clip (.mp4, .webm, .mov, .mkv, .gif: every frame edited, as many frames back); or a folder of images with --out a folder (default: the bundled example; with --out a video, it as a panning clip)")
    parser.add_argument("--map", default=None, help="change map: an image file (grey levels in the file's own range: 8/16-bit, float 0..1; colour as luminance, alpha over black) or a preset (default: gradient-x; with --map-prompt, full); for a clip, one still map for every frame or a map video of the same frame count")
    parser.add_argument("--out", required=True, help="output image; .png, .jpg, .webp, ...; for a clip, a video (.mp4, .webm, .mov, .mkv: lossless, .gif); with --image a folder, a folder")
    parser.add_argument("--save-frames", default=None, metavar="DIR", help="for a clip: also write every output frame as a lossless PNG into DIR")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # The model: where it comes from and what is added to it (see models/sources.py, models/loras.py).
    from ..models.families import INPAINT_MASK, INPAINT_MASKS, supported

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
    parser.add_argument("--schedule", default=None, type=str.lower, choices=SCHEDULES, metavar="NAME", help=f"noise schedule: {', '.join(SCHEDULES)} (default: karras; for SD3/Flux and few-step folders, model: the folder's own scheduler, as diffusers runs it). The last seven are ComfyUI's, for models with discrete training levels")
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=_number(int, lambda n: n >= -1, "a whole number >= 0, or -1 for a random seed"), default=0, help="random seed; -1: a random one, printed (default: 0)")
    seeds.add_argument("--seeds", type=_seeds, metavar="N,N,...", help="several seeds in one run: one output per seed, OUT-seedN")
    parser.add_argument("--strength", type=_number(float, lambda s: 0 <= s <= 1, "a number in [0, 1]"), default=1.0, help="1: release pixels fully; below 1 blends the map itself into the release mask, a gentler edit (default: 1)")
    parser.add_argument("--release", default="faithful", choices=RELEASES, help="faithful: ease each pixel in over the step before its release, no bands, each strength changing about as much as in a converged edit (default); smooth: the same ease linear in the clock, which changes more than asked at few steps; binary: ComfyUI's rule, one band per step")
    parser.add_argument("--compat", choices=COMPAT_NAMES, help="follow another tool's rule exactly: ComfyUI's node, or the diffusers Differential Diffusion pipelines' (SDXL/SD3 pre-blend, Flux.1/Z-Image post-blend; docs/peers.md)")
    parser.add_argument("--clock", default=None, choices=CLOCKS, help="the clock that releases pixels (default: timestep)")
    parser.add_argument("--threshold", choices=CLOCKS, help=argparse.SUPPRESS)  # the old name of --clock
    parser.add_argument("--keep-map", action="store_true", help="read the map as white = keep, black = change")
    parser.add_argument("--denoise", type=_number(float, lambda d: 0 < d <= 1, "a number in (0, 1]"), default=1.0, help="global denoise: the part of the schedule to run (default: 1)")
    parser.add_argument("--prompt", default="", help="text prompt (diffusers models; the built-in model takes none)")
    parser.add_argument("--negative", default="", help="negative prompt (diffusers models with guidance)")
    parser.add_argument("--cfg", type=_number(float, math.isfinite, "a finite number"), default=None, help="classifier-free guidance scale (default: the model family's: 7; Flux.1 dev: its guidance input, 3.5; FLUX.1 Fill 30; Chroma 5; Qwen-Image 4; Z-Image 6; FLUX.2 Klein base 4; few-step and distilled models: 1)")
    parser.add_argument("--cfg-2", type=_number(float, math.isfinite, "a finite number"), default=None, help="the second expert's guidance scale, for a model of two (Wan 2.2 A14B's low-noise transformer_2; default: --cfg)")
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
    # Negative numbers in exponent form (--grow -1e3) are values, not flags.
    parser._negative_number_matcher = NEGATIVE_NUMBER
    return parser


def _warn(message: str) -> None:
    print(f"{PROG}: warning: {as_flags(message)}", file=sys.stderr)


def _outputs(args: argparse.Namespace) -> tuple[tuple[Optional[int], str], ...]:
    """(seed, result file) per seed: OUT, or OUT-seedN for each of --seeds; seed None: a random one."""
    if args.seeds is None:
        return ((None if args.seed == -1 else args.seed, args.out),)
    return tuple((seed, str(sibling(args.out, f"seed{seed}"))) for seed in args.seeds)


def _check_outputs(args: argparse.Namespace, change_map: str, results: tuple[tuple[Optional[int], str], ...], video: bool) -> list[Path]:
    """The files (and frame folders) this run will write, checked before any work is done."""
    from ..files.images import output_format
    from ..files.video import VIDEO_SUFFIXES, is_video

    out = Path(args.out)
    folder = out.parent
    if not folder.is_dir():
        raise InputError(f"--out {args.out}: the folder {folder} does not exist; create it or write elsewhere")
    if out.is_dir():
        raise InputError(f"--out {args.out} is a folder; give a file name such as {'result.mp4' if video else 'result.png'}")
    # A GIF is an image too: an image's result may be one.
    if is_video(out) != video and not (out.suffix.lower() == ".gif" and not video):
        wanted = f"a video: {', '.join(VIDEO_SUFFIXES)}" if video else "an image (.png, .jpg, .webp, ...)"
        raise InputError(f"--out {args.out}: the result of {'a clip' if video else 'an image'} is {wanted}")
    if not video:
        output_format(args.out)
        if args.save_frames is not None:
            raise InputError(f"--save-frames {args.save_frames}: for a video clip (--image CLIP)")
        if args.map is not None and is_video(args.map):
            raise InputError(f"--map {args.map}: a map video is for a video clip (--image CLIP); an image takes a still map")
    for flag in ("--save-strip", "--save-masks") if video else ():
        if getattr(args, flag[2:].replace("-", "_")):
            raise InputError(f"{flag}: for images; for a clip, --save-frames DIR writes every frame")
    outputs: dict[str, Path] = {}
    for _, result in results:
        outputs[f"--out ({Path(result).name})"] = Path(result)
        outputs.update({"--save-strip": sibling(result, "strip")} if args.save_strip else {})
        outputs.update({"--save-masks": sibling(result, "masks")} if args.save_masks else {})
        if args.save_frames is not None:
            from .jobs import frames_folder

            frames = frames_folder(args.save_frames, result, len(results) > 1)
            if frames.exists() and not frames.is_dir():
                raise InputError(f"--save-frames {args.save_frames}: {frames} is a file; give a folder")
            outputs[f"--save-frames ({frames.name})"] = frames
    # No input is ever written over, however its path is spelled.
    inputs = {"--image": args.image, "--map": None if change_map in PRESETS else change_map}
    for flag, path in outputs.items():
        for name, given in inputs.items():
            if given is not None and same_file(path, given):
                raise InputError(f"{flag.split()[0]} would write {path}, over the input {name} {given}; give --out another name")
    return list(outputs.values())


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """edit_image's settings from the flags, checked (EditSettings) before any work."""
    from dataclasses import fields

    from ..editing.image_edit import EditSettings
    from ..models.controlnets import Control

    if args.threshold is not None:
        _warn("--threshold is deprecated and will be removed: it is now --clock")
        if args.clock is not None and args.clock != args.threshold:
            raise InputError(f"--clock {args.clock} and --threshold {args.threshold} disagree; give --clock alone")
    # Every setting is the flag of its name, but those built here and the seed (one per job).
    built = ("controls", "seed", "progress", "clock")
    settings = {field.name: getattr(args, field.name) for field in fields(EditSettings) if field.name not in built}
    settings["clock"] = args.clock or args.threshold or "timestep"
    controls = []
    for group in args.controls or []:
        if "image" not in group:
            raise InputError(f"--controlnet {group['source']}: no --control-image for it; give --control-image IMAGE after it")
        options = {key: group[key] for key in ("scale", "start", "end", "mode") if key in group}
        controls.append(Control(Control(group["image"]).pixels(), **options))
    settings["controls"] = controls
    settings["progress"] = not args.quiet and sys.stderr.isatty()
    EditSettings(**settings)
    return settings


def _device(name: str) -> str:
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available here; use --device cpu (or auto)")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(args: argparse.Namespace) -> list[Path]:
    """Do the edit ``args`` describes; returns the files written."""
    import warnings

    from ..editing.image_edit import EditSettings, EditWarning, load_options
    from ..models import find_model, open_model, refuse_for_builtin

    change_map = args.map or ("full" if args.map_prompt is not None else "gradient-x")
    # The settings' warnings are said once, as they come, before any work; the jobs' repeats are not.
    said: set[str] = set()

    def checked(step: Callable[[], Any]) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", EditWarning)
            value = step()
        for warning in caught:
            if issubclass(warning.category, EditWarning) and str(warning.message) not in said:
                said.add(str(warning.message))
                _warn(str(warning.message))
        return value

    outputs = _outputs(args)
    device = _device(args.device)
    settings = checked(lambda: _settings(args))
    folder = args.image is not None and Path(args.image).is_dir()
    from ..files.video import is_video

    # A clip in, a clip out; a GIF may be either, so with a GIF in, --out decides.
    given = args.image if args.image is not None else args.out
    video = not folder and is_video(given) and (Path(given).suffix.lower() != ".gif" or is_video(args.out))
    if folder and args.save_frames is not None:
        raise InputError(f"--save-frames {args.save_frames}: for a video clip (--image CLIP), not a folder of images")
    written = [] if folder else _check_outputs(args, change_map, outputs, video)
    loading = {"config": args.config, "lora": args.lora, "dtype": args.dtype, "offload": args.offload, "vae_tiling": args.vae_tiling,
               "controlnet": [group["source"] for group in args.controls or []]}
    if args.model == "builtin":
        refuse_for_builtin(loading)
    load = load_options({**loading, "allow_pickle": args.allow_pickle})
    # Checked before the model loads, which can take minutes.
    found = find_model(args.model, config=load["config"], allow_pickle=load["allow_pickle"])
    checked(lambda: EditSettings(**settings).check_model(found, "video" if video else "image"))

    def warn(message: str) -> None:  # a folder's messages start with their image's name
        if not any(message == known or message.endswith(f": {known}") for known in said):
            _warn(message)

    if folder:
        from .folders import plan, run_folder

        jobs = plan(args.image, args.out, change_map, [seed for seed, _ in outputs], PRESETS, args.save_strip, args.save_masks, _warn, args.quiet)
    # Loaded once for every image and seed of the run (a Ray worker loads its own).
    ray = folder and args.executor == "ray"
    model = ModelSpec(args.model, device, load) if ray else open_model(found, device, keep=True, **load)
    if not ray and model.description and not args.quiet:
        print(f"{PROG}: model: {model.description}", file=sys.stderr)
    if folder:
        return [Path(path) for path in run_folder(jobs, model, settings, args.out, args.executor, args.address, warn, args.quiet)]
    from .jobs import run_job

    done = run_job(model, settings, Job(args.image, change_map, outputs, args.save_strip, args.save_masks, video, args.save_frames))
    for message in done.warnings:
        warn(message)
    if not args.quiet:
        if done.region:
            print(f"{PROG}: {done.region}", file=sys.stderr)
        if args.seeds is None and args.seed == -1:
            print(f"{PROG}: seed {done.seeds[0]}", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point; returns the exit status."""

    def work() -> None:
        args = build_parser().parse_args(argv)
        from .environment import check_torch

        check_torch()  # a broken PyTorch install: one line naming the fix, before any work
        written = run(args)
        if argv is None:
            # Run as the program: the files are written, and Ctrl-C during the
            # interpreter's shutdown (torch takes a while) must not report a failure.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not args.quiet:
            for path in written:
                print(f"wrote {path}")

    return command_status(PROG, work, "interrupted; nothing was written over", translate=as_flags)
