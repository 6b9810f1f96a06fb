"""The command line: ``kdiff-differential`` (also ``python -m kdiff_differential``).

A thin shell around :class:`~kdiff_differential.editing.pipeline.Editor`: parse the flags
(:mod:`.parser`), build the settings once, find the model (it loads at the first edit),
run one job per image, clip and seed (:mod:`.jobs`; a folder's in :mod:`.folders`), write
the files. With only ``--out`` it runs the demo. Bad input ends the run with one line on
stderr and exit status 2; this layer alone speaks of ``--flags``, translating the
library's ``name=value`` at its boundary.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, TextIO, Union

# Only torch-free modules here: --help and argument errors must not wait for torch.
from ..choices import PRESETS
from ..errors import EditWarning, InputError, command_status
from ..files.atomic import check_writable, same_file
from .jobs import Job, frames_folder, sibling
from .parser import PROG, build_parser

# The library's names for what a flag gives, where they are not the flag's own name.
RENAMED = {"change_map": "--map", "loras": "--lora", "controlnets": "--controlnet", "controls": "--controlnet"}
CONTROL = ("control_image", "control_scale", "control_start", "control_end", "control_mode")
LOADING = ("config", "allow_pickle", "dtype", "offload", "vae_tiling", "device", "seed", "lora", "controlnet")


def as_flags(message: str) -> str:
    """A library message in the command line's words: each ``name=`` of a setting, the
    model or its options becomes ``--name `` (``grow=1e9`` reads ``--grow 1e9``)."""
    from ..editing.settings import setting_names

    names = {**{name: f"--{name.replace('_', '-')}" for name in (*setting_names(), *LOADING, *CONTROL, "model", "image")}, **RENAMED}
    pattern = "|".join(sorted(map(re.escape, names), key=len, reverse=True))
    # name=value reads "--name value"; a bare name= (no value) reads "--name".
    message = re.sub(rf"(?<![\w.-])({pattern})=(?=[\s,:;)]|$)", lambda match: names[match[1]], message)
    return re.sub(rf"(?<![\w.-])({pattern})=", lambda match: f"{names[match[1]]} ", message)


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
    if not out.parent.is_dir():
        raise InputError(f"--out {args.out}: the folder {out.parent} does not exist; create it or write elsewhere")
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
    check_writable(out.parent, f"--out {args.out}")
    outputs: dict[str, Path] = {}
    for _, result in results:
        outputs[f"--out ({Path(result).name})"] = Path(result)
        outputs.update({"--save-strip": sibling(result, "strip")} if args.save_strip else {})
        outputs.update({"--save-masks": sibling(result, "masks")} if args.save_masks else {})
        if args.save_frames is not None:
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


def _settings(args: argparse.Namespace) -> Any:
    """The edit's settings from the flags, checked once (EditSettings) before any work."""
    from dataclasses import fields

    from ..editing.settings import EditSettings
    from ..models.controlnets import Control

    controls = []
    for group in args.controls or []:
        if "image" not in group:
            raise InputError(f"--controlnet {group['source']}: no --control-image for it; give --control-image IMAGE after it")
        options = {key: group[key] for key in ("scale", "start", "end", "mode") if key in group}
        controls.append(Control(Control(group["image"]).pixels(), **options))
    # Every setting is the flag of its name, but those built here.
    built = {"controls": controls, "progress": not args.quiet and sys.stderr.isatty(), "clock": args.clock or "timestep"}
    values: dict[str, Any] = {field.name: built.get(field.name, getattr(args, field.name, None)) for field in fields(EditSettings)}
    return EditSettings(**values)


def _model(args: argparse.Namespace) -> Any:
    """The model the flags name, found (not loaded) with its loading options, checked."""
    from ..models import find_model
    from ..models.loras import parse_lora

    options = {"config": args.config, "loras": [parse_lora(entry) for entry in args.lora], "allow_pickle": args.allow_pickle,
               "dtype": args.dtype, "offload": args.offload, "vae_tiling": args.vae_tiling,
               "controlnets": [group["source"] for group in args.controls or []]}
    given = {name: value for name, value in options.items() if value not in (None, False, [])}
    return find_model(args.model, **given)


def run(args: argparse.Namespace, say: Any) -> list[Path]:
    """Do the edit ``args`` describes, telling the user ``say(message)``; returns the files written."""
    from ..editing.pipeline import Editor
    from ..files.video import is_video
    from ..models import resolve_device

    change_map = args.map or ("full" if args.map_prompt is not None else "gradient-x")
    outputs = _outputs(args)
    device = resolve_device(args.device)
    settings = _settings(args)
    folder = args.image is not None and Path(args.image).is_dir()
    # A clip in, a clip out; a GIF may be either, so with a GIF in, --out decides.
    given = args.image if args.image is not None else args.out
    video = not folder and is_video(given) and (Path(given).suffix.lower() != ".gif" or is_video(args.out))
    if folder and args.save_frames is not None:
        raise InputError(f"--save-frames {args.save_frames}: for a video clip (--image CLIP), not a folder of images")
    written = [] if folder else _check_outputs(args, change_map, outputs, video)
    # The settings against the model, checked before it loads, which can take minutes.
    editor = Editor(_model(args), settings, device=device)
    if folder:
        from .folders import plan, run_folder

        jobs = plan(args.image, args.out, change_map, [seed for seed, _ in outputs], PRESETS, args.save_strip, args.save_masks,
                    say, args.quiet)
        if args.executor == "local" and not args.quiet and editor.model.description:
            print(f"{PROG}: model: {editor.model.description}", file=sys.stderr)
        return [Path(path) for path in run_folder(jobs, editor, args.out, args.executor, args.address, say, args.quiet)]
    from .jobs import run_job

    if not args.quiet and editor.model.description:
        print(f"{PROG}: model: {editor.model.description}", file=sys.stderr)
    done = run_job(editor, Job(args.image, change_map, outputs, args.save_strip, args.save_masks, video, args.save_frames))
    for message in done.warnings:
        say(message)
    if not args.quiet:
        if done.region:
            print(f"{PROG}: {done.region}", file=sys.stderr)
        if args.seeds is None and args.seed == -1:
            print(f"{PROG}: seed {done.seeds[0]}", file=sys.stderr)
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The console entry point; returns the exit status."""
    said: set[str] = set()

    def say(message: str) -> None:
        """A warning, once however often the run meets it (a folder's start with their image's name)."""
        if not any(message == known or message.endswith(f": {known}") for known in said):
            said.add(message)
            print(f"{PROG}: warning: {as_flags(message)}", file=sys.stderr)

    def shown(message: Union[Warning, str], category: type[Warning], filename: str, lineno: int, file: Optional[TextIO] = None,
              line: Optional[str] = None) -> None:
        if issubclass(category, EditWarning):
            say(str(message))
        else:
            python_shows(message, category, filename, lineno, file, line)

    def work() -> None:
        args = build_parser().parse_args(argv)
        from .environment import check_torch

        check_torch()  # a broken PyTorch install: one line naming the fix, before any work
        with warnings.catch_warnings():
            warnings.simplefilter("always", EditWarning)
            warnings.showwarning = shown
            written = run(args, say)
        if argv is None:
            # Run as the program: the files are written, and Ctrl-C during the
            # interpreter's shutdown (torch takes a while) must not report a failure.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        if not args.quiet:
            for path in written:
                print(f"wrote {path}")

    python_shows = warnings.showwarning
    return command_status(PROG, work, "interrupted; nothing was written over", translate=as_flags)
