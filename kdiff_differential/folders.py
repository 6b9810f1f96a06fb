"""Folders: ``--image DIR --out DIR`` edits every image in a folder, one command for a batch.

- The images are the folder's files (not its subfolders, not hidden files), in name
  order. A file that is not an image is named in one warning line and skipped.
- ``--map`` is a preset, one map file for every image, or a folder of maps matched by
  file name: the map of ``photo.jpg`` is the map folder's file whose name without its
  extension is ``photo``. A missing map stops the batch before any run.
- Each output is ``OUT/<name>.png`` (PNG, so kept pixels stay exact), of its input's
  size. Outputs that exist already are skipped, so an interrupted batch resumes where it
  stopped.
- One progress bar over the images (on a terminal, not with ``--quiet``); each image runs
  quietly as a single ``--image FILE --out FILE`` run would.
- ``--executor ray`` runs the images on a Ray cluster (:mod:`kdiff_differential.executors`),
  one CPU each; the outputs are the same bytes as with ``local``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

from .errors import InputError
from .files import same_file

OUTPUT_SUFFIX = ".png"


def _is_image(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def list_images(folder: Path) -> tuple[list[Path], list[Path]]:
    """The image files of ``folder`` in name order, and the other (non-hidden) files."""
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    images = [path for path in files if _is_image(path)]
    return images, [path for path in files if path not in images]


def maps_for(images: list[Path], spec: str, presets: tuple[str, ...]) -> list[str]:
    """The ``--map`` of each image: the preset or the file itself, or from a folder the
    file of the same name without extension. InputError naming the first image without one."""
    folder = Path(spec)
    if spec in presets or not folder.is_dir():
        return [spec] * len(images)
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith("."):
            by_stem.setdefault(path.stem, []).append(path)
    maps = []
    for image in images:
        found = by_stem.get(image.stem, [])
        if len(found) != 1:
            problem = "no map" if not found else f"{len(found)} maps ({', '.join(path.name for path in found)})"
            raise InputError(f"--map {spec}: {problem} for the image {image.name}; give one file named {image.stem}.<ext> per image")
        maps.append(str(found[0]))
    return maps


def plan(args: argparse.Namespace, presets: tuple[str, ...], warn: Callable[[str], None]) -> list[argparse.Namespace]:
    """One single-image run's arguments per image of the folder ``args.image`` that has
    no output yet, all checked before any run: the output folder, the maps, and that no
    output is an input."""
    source, out = Path(args.image), Path(args.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {args.out} is a file, and --image {args.image} a folder; give a folder for the outputs")
    if not out.exists() and not out.parent.is_dir():
        raise InputError(f"--out {args.out}: the folder {out.parent} does not exist; create it or write elsewhere")
    images, others = list_images(source)
    if others:
        warn(f"not images, skipped: {', '.join(path.name for path in others)}")
    if not images:
        raise InputError(f"--image {args.image}: the folder holds no image files")
    stems = [path.stem for path in images]
    twins = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twins:
        raise InputError(f"--image {args.image}: several images named {twins[0]} (different extensions) would write one output {twins[0]}{OUTPUT_SUFFIX}; rename one")
    maps = maps_for(images, args.map, presets)
    inputs = [*images, *(Path(spec) for spec in maps if spec not in presets)]
    runs = []
    for image, spec in zip(images, maps):
        target = out / f"{image.stem}{OUTPUT_SUFFIX}"
        for given in inputs:
            if same_file(target, given):
                raise InputError(f"--out {args.out} would write {target}, over the input {given}; give another --out folder")
        if not target.exists():
            runs.append(argparse.Namespace(**{**vars(args), "image": str(image), "map": spec, "out": str(target), "quiet": True}))
    skipped = len(images) - len(runs)
    if skipped and not args.quiet:
        warn(f"{skipped} of {len(images)} outputs exist already and are skipped")
    return runs


def run_folder(
    args: argparse.Namespace,
    edit: Callable[[argparse.Namespace], list[Path]],
    presets: tuple[str, ...],
    warn: Callable[[str], None],
    address: Optional[str] = None,
) -> list[Path]:
    """Edit every image of the folder ``args.image`` into the folder ``args.out`` with
    ``edit`` (a single image's run, module-level so that Ray workers can import it) on
    executor ``args.executor``; returns the files written."""
    from tqdm import tqdm

    from .executors import execute, import_ray

    runs = plan(args, presets, warn)
    if args.executor == "ray":
        try:
            import_ray()
        except ImportError as error:
            raise InputError(str(error)) from None
    Path(args.out).mkdir(exist_ok=True)
    written: list[Path] = []
    with tqdm(total=len(runs), desc="images", unit="image", disable=args.quiet or not sys.stderr.isatty()) as progress:
        for _, files in execute(args.executor, edit, runs, address=address):
            written.extend(files)
            progress.update(1)
    return written
