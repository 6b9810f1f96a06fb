"""One image's job: its file and map in, its files out, through :func:`~kdiff_differential.edit_image`
(a video file's, through :func:`~kdiff_differential.edit_video`).

The command line runs one job for ``--image FILE``, and one per image for a folder, here
or on a Ray worker (a job and everything it holds pickle, and the function is
module-level). A job writes the result for each seed and, when asked, the strip and the
mask grid beside it, each file atomically. The warnings the edit gave come back with
the files, so that a worker's reach the user too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union


def sibling(out: Union[str, Path], tag: str) -> Path:
    """OUT-tag.ext beside OUT: where the strip, the masks and each of several seeds go."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{tag}{out.suffix}")


@dataclass(frozen=True)
class ModelSpec:
    """A model to open where the job runs (a Ray worker): its source, device and
    :func:`~kdiff_differential.models.open_model`'s keywords. Opened once per process."""

    name: str
    device: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> Any:
        from ..models import open_model

        return open_model(self.name, self.device, keep=True, **self.options)


@dataclass(frozen=True)
class Job:
    """``image`` (a file; None: the bundled example) edited with ``change_map`` (a preset
    or a map file) once per (seed, output file) of ``outputs`` (seed None: a random one).
    A video job (``video``: its file, or the bundled example's clip when ``image`` is None)
    writes video files, and each output's frames as PNGs into ``save_frames`` (a folder,
    OUT's tag added for several seeds)."""

    image: Optional[str]
    change_map: str
    outputs: tuple[tuple[Optional[int], str], ...]
    save_strip: bool = False
    save_masks: bool = False
    video: bool = False
    save_frames: Optional[str] = None


@dataclass
class Done:
    """What a job did: the files written, the seeds used (in ``outputs``' order), where
    the model ran (one line) and the warnings the edit gave."""

    files: list[str]
    seeds: list[int]
    region: str
    warnings: list[str]


def run_job(model: Any, settings: dict[str, Any], job: Job) -> Done:
    """Run ``job`` on ``model`` (loaded, or a :class:`ModelSpec`) with the
    :class:`~kdiff_differential.editing.image_edit.EditSettings` keywords ``settings``."""
    from ..editing.image_edit import EditWarning, edit_image
    from ..files.images import read_image, write_image

    if isinstance(model, ModelSpec):
        model = model.open()
    if job.video:
        return _run_video_job(model, settings, job)
    if job.image is None:
        from ..models.builtin import load_example_image

        image = load_example_image()
    else:
        image = read_image(job.image)
    done = Done([], [], "", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EditWarning)
        for seed, out in job.outputs:
            strip_file, masks_file = str(sibling(out, "strip")), str(sibling(out, "masks"))
            edit = edit_image(model, image, job.change_map, **{**settings, "seed": seed})
            write_image(edit.image, out)
            done.files.append(out)
            done.seeds.append(edit.seed)
            done.region = edit.region.describe() if edit.region.cropped else ""
            if job.save_strip:
                from ..editing.figures import strip

                decoded = edit.decoded if settings.get("composite", "difference") != "none" else None
                figure = strip(image, edit.change_map, edit.image, keep_map=settings.get("keep_map", False), decoded=decoded)
                write_image(figure, strip_file)
            if job.save_masks and edit.edit is not None:
                from ..editing.figures import mask_grid

                masks = [edit.edit.wrapper.mask(sigma)[0, 0].cpu() for sigma in edit.edit.step_sigmas]
                write_image(mask_grid(masks, edit.region.width / edit.region.height, edit.edit.step_sigmas), masks_file)
    return _said(done, caught)


def _said(done: Done, caught: list[warnings.WarningMessage]) -> Done:
    """``done`` with the edit's warnings among ``caught``, each once, however many seeds
    said it; others go back to Python's own handling."""
    from ..editing.image_edit import EditWarning

    for warning in caught:
        if issubclass(warning.category, EditWarning):
            done.warnings.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    done.warnings = list(dict.fromkeys(done.warnings))
    return done


def frames_folder(save_frames: str, out: str, several: bool) -> Path:
    """Where an output's frames go: ``save_frames``, or for one of several seeds
    ``save_frames``-seedN (OUT's tag)."""
    folder = Path(save_frames)
    return folder.with_name(f"{folder.name}-{Path(out).stem.rsplit('-', 1)[-1]}") if several else folder


def _run_video_job(model: Any, settings: dict[str, Any], job: Job) -> Done:
    from ..editing.image_edit import EditWarning
    from ..editing.video_edit import edit_video
    from ..files.video import read_video, write_frames, write_video

    if job.image is None:
        from ..models.builtin import load_example_clip

        frames, fps = load_example_clip(), 8.0
    else:
        clip = read_video(job.image)
        frames, fps = clip.frames, clip.fps
    done = Done([], [], "", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EditWarning)
        for seed, out in job.outputs:
            edit = edit_video(model, frames, job.change_map, **{**settings, "seed": seed})
            # The frames first: a folder holding another run's frames is refused before any file is written.
            if job.save_frames is not None:
                folder = frames_folder(job.save_frames, out, len(job.outputs) > 1)
                write_frames(folder, edit.frames)
                done.files.append(str(folder))
            write_video(out, edit.frames, fps)
            done.files.append(out)
            done.seeds.append(edit.seed)
            done.region = edit.region.describe() if edit.region.cropped else ""
    return _said(done, caught)
