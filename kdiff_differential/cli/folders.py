"""Folders: ``--image DIR --out DIR`` edits every image in a folder, one command for a batch.

- The images are the folder's files (not its subfolders, not hidden files), in name
  order. A file that is not an image is named in one warning line and skipped.
- ``--map`` is a preset, one map file for every image, or a folder of maps matched by
  file name: the map of ``photo.jpg`` is the map folder's file whose name without its
  extension is ``photo``. A missing map stops the batch before any run.
- Each output is ``OUT/<name>.png`` (PNG, so kept pixels stay exact), of its input's
  size. Outputs that exist already are skipped, so an interrupted batch resumes where it
  stopped.
- The model loads once for the whole folder. One progress bar over the images (on a
  terminal, not with ``--quiet``); each image runs as a single ``--image FILE --out FILE``
  run would, and its warnings name it.
- ``--executor ray`` runs the images on a Ray cluster (:mod:`kdiff_differential.executors`), each worker loading the model once,
  one CPU each; the outputs are the same bytes as with ``local``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..errors import InputError
from ..files.atomic import check_writable, same_file
from .jobs import Job, run_job, sibling

if TYPE_CHECKING:
    from ..editing.pipeline import Editor

OUTPUT_SUFFIX = ".png"


def _is_image(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return False


def _image_suffixes() -> set[str]:
    """The extensions Pillow reads and writes images by, and the video suffixes."""
    from PIL import Image

    from ..files.video import VIDEO_SUFFIXES

    return {*Image.registered_extensions(), *VIDEO_SUFFIXES}


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


def plan(image: str, out: str, change_map: str, seeds: Sequence[Optional[int]], presets: tuple[str, ...], save_strip: bool,
         save_masks: bool, warn: Callable[[str], None], quiet: bool) -> list[Job]:
    """One job per image of the folder ``image`` whose outputs in the folder ``out`` (one
    per seed of ``seeds``: OUT/name.png, or OUT/name-seedN.png for several) are not all
    there yet, all checked before any run: the output folder, the maps, and that no
    output is an input."""
    source, target_folder = Path(image), Path(out)
    if target_folder.exists() and not target_folder.is_dir():
        raise InputError(f"--out {out} is a file, and --image {image} a folder; give a folder for the outputs")
    if not target_folder.exists() and target_folder.suffix.lower() in _image_suffixes():
        raise InputError(f"--out {out} names an image file, and --image {image} is a folder; give a folder for the outputs")
    if not target_folder.exists() and not target_folder.parent.is_dir():
        raise InputError(f"--out {out}: the folder {target_folder.parent} does not exist; create it or write elsewhere")
    check_writable(target_folder if target_folder.exists() else target_folder.parent, f"--out {out}")
    images, others = list_images(source)
    if others:
        warn(f"not images, skipped: {', '.join(path.name for path in others)}")
    if not images:
        raise InputError(f"--image {image}: the folder holds no image files")
    stems = [path.stem for path in images]
    twins = sorted({stem for stem in stems if stems.count(stem) > 1})
    if twins:
        raise InputError(f"--image {image}: several images named {twins[0]} (different extensions) would write one output {twins[0]}{OUTPUT_SUFFIX}; rename one")
    maps = maps_for(images, change_map, presets)
    inputs = [*images, *(Path(spec) for spec in maps if spec not in presets)]
    jobs = []
    for path, spec in zip(images, maps):
        target = target_folder / f"{path.stem}{OUTPUT_SUFFIX}"
        outputs = tuple((seed, str(target if len(seeds) == 1 else sibling(target, f"seed{seed}"))) for seed in seeds)
        for _, written in outputs:
            for given in inputs:
                if same_file(written, given):
                    raise InputError(f"--out {out} would write {written}, over the input {given}; give another --out folder")
        if not all(Path(written).exists() for _, written in outputs):
            jobs.append(Job(str(path), spec, outputs, save_strip, save_masks))
    skipped = len(images) - len(jobs)
    if skipped and not quiet:
        warn(f"{skipped} of {len(images)} outputs exist already and are skipped")
    return jobs


def run_folder(jobs: list[Job], editor: "Editor", out: str, executor: str, address: Optional[str], warn: Callable[[str], None],
               quiet: bool) -> list[str]:
    """Run ``jobs`` (from :func:`plan`) with ``editor`` on ``executor``: here (its model
    loaded once), or on Ray, where each worker opens the model itself. Each image's
    warnings are named by its file. Returns the files written."""
    from tqdm import tqdm

    from ..executors import execute, import_ray

    if executor == "ray":
        try:
            import_ray()
        except ImportError as error:
            raise InputError(str(error)) from None
    Path(out).mkdir(exist_ok=True)
    written: list[str] = []
    with tqdm(total=len(jobs), desc="images", unit="image", disable=quiet or not sys.stderr.isatty()) as progress:
        for job, done in execute(executor, run_job, jobs, shared=(editor,), address=address):
            for message in done.warnings:
                warn(f"{Path(str(job.image)).name}: {message}")
            written.extend(done.files)
            progress.update(1)
    return written
