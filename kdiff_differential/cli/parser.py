"""The command line's flags: :func:`build_parser`. Only torch-free modules here, so that
``--help`` and argument errors answer at once."""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, Callable, Optional

from .. import __version__
from ..choices import CLOCKS, COMPAT_NAMES, COMPOSITES, CROPS, EXECUTORS, FILLS, PRESETS, RELEASES, SCHEDULES
from ..core.samplers import DEFAULT_STEPS, MAX_SEED, OWN_STEPS, SAMPLERS, sampler_named
from ..errors import OneLineParser

PROG = "kdiff-differential"
DEVICES = ("auto", "cpu", "cuda")
NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)(e[-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)


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
    outside = [seed for seed in seeds if not 0 <= seed <= MAX_SEED]
    if outside:
        raise argparse.ArgumentTypeError(f"{outside[0]} is out of range: give whole numbers in [0, {MAX_SEED}]")
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
    seeds.add_argument("--seed", type=_number(int, lambda n: -1 <= n <= MAX_SEED, f"a whole number in [0, {MAX_SEED}], or -1 for a random seed"), default=0, help="random seed; -1: a random one, printed (default: 0)")
    seeds.add_argument("--seeds", type=_seeds, metavar="N,N,...", help="several seeds in one run: one output per seed, OUT-seedN")
    parser.add_argument("--strength", type=_number(float, lambda s: 0 <= s <= 1, "a number in [0, 1]"), default=1.0, help="1: release pixels fully; below 1 blends the map itself into the release mask, a gentler edit (default: 1)")
    parser.add_argument("--release", default="faithful", choices=RELEASES, help="faithful: ease each pixel in over the step before its release, no bands, each strength changing about as much as in a converged edit (default); smooth: the same ease linear in the clock, which changes more than asked at few steps; binary: ComfyUI's rule, one band per step")
    parser.add_argument("--compat", choices=COMPAT_NAMES, help="follow another tool's rule exactly: ComfyUI's node, or the diffusers Differential Diffusion pipelines' (SDXL/SD3 pre-blend, Flux.1/Z-Image post-blend; docs/peers.md)")
    parser.add_argument("--clock", default=None, choices=CLOCKS, help="the clock that releases pixels (default: timestep)")
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
