"""One job: an image or a clip and its map in, its files out, through an
:class:`~kdiff_differential.editing.pipeline.Editor`.

The command line runs one job for ``--image FILE``, and one per image for a folder, here
or on a Ray worker (a job, the editor and everything they hold pickle, and
:func:`run_job` is module-level). A job writes the result for each seed and, when asked,
the strip and the mask grid beside an image's, or every frame of a clip's as PNGs, each
file atomically. The warnings the edit gave come back with the files, so that a
worker's reach the user too.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Union

from ..errors import EditWarning, InputError

if TYPE_CHECKING:
    import numpy as np

    from ..editing.pipeline import Editor


def sibling(out: Union[str, Path], tag: str) -> Path:
    """OUT-tag.ext beside OUT: where the strip, the masks and each of several seeds go."""
    out = Path(out)
    return out.with_name(f"{out.stem}-{tag}{out.suffix}")


def frames_folder(save_frames: str, out: str, several: bool) -> Path:
    """Where an output's frames go: ``save_frames``, or for one of several seeds
    ``save_frames``-seedN (OUT's tag)."""
    folder = Path(save_frames)
    return folder.with_name(f"{folder.name}-{Path(out).stem.rsplit('-', 1)[-1]}") if several else folder


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

    def read(self) -> tuple["np.ndarray", float]:
        """The pixels to edit, an image (H, W, 3) or a clip's frames (T, H, W, 3), and the clip's rate."""
        from ..models.builtin import load_example_clip, load_example_image

        if self.image is None:
            return (load_example_clip(), 8.0) if self.video else (load_example_image(), 0.0)
        if self.video:
            from ..files.video import read_video

            clip = read_video(self.image)
            return clip.frames, clip.fps
        from ..files.images import read_image

        return read_image(self.image), 0.0


@dataclass
class Done:
    """What a job did: the files written, the seeds used (in ``outputs``' order), where
    the model ran (one line) and the warnings the edit gave."""

    files: list[str]
    seeds: list[int]
    region: str
    warnings: list[str]


def run_job(editor: "Editor", job: Job) -> Done:
    """Run ``job`` with ``editor`` (its model and settings)."""
    pixels, fps = job.read()
    done = Done([], [], "", [])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EditWarning)
        for seed, out in job.outputs:
            if job.video:
                edit: Any = editor.edit_video(pixels, job.change_map, seed=seed)
                _write_clip(edit, job, out, fps, done)
            else:
                edit = editor.edit_image(pixels, job.change_map, seed=seed)
                _write_image(edit, job, pixels, out, editor, done)
            done.seeds.append(edit.seed)
            done.region = edit.region.describe() if edit.region.cropped else ""
    for warning in caught:
        if issubclass(warning.category, EditWarning):
            done.warnings.append(str(warning.message))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    done.warnings = list(dict.fromkeys(done.warnings))
    return done


def _write_image(edit: Any, job: Job, image: "np.ndarray", out: str, editor: "Editor", done: Done) -> None:
    from ..files.images import write_image

    _rescued(out, lambda path: write_image(edit.image, path))
    done.files.append(out)
    if job.save_strip:
        from ..editing.figures import strip

        decoded = edit.decoded if editor.settings.composite != "none" else None
        figure = strip(image, edit.change_map, edit.image, keep_map=editor.settings.keep_map, decoded=decoded)
        _rescued(str(sibling(out, "strip")), lambda path: write_image(figure, path))
    if job.save_masks and edit.run is not None:
        from ..editing.figures import mask_grid

        masks = [edit.run.wrapper.mask(sigma)[0, 0].cpu() for sigma in edit.run.step_sigmas]
        grid = mask_grid(masks, edit.region.width / edit.region.height, edit.run.step_sigmas)
        _rescued(str(sibling(out, "masks")), lambda path: write_image(grid, path))


def _write_clip(edit: Any, job: Job, out: str, fps: float, done: Done) -> None:
    from ..files.video import write_frames, write_video

    # The frames first: a folder holding another run's frames is refused before any file is written.
    if job.save_frames is not None:
        folder = frames_folder(job.save_frames, out, len(job.outputs) > 1)
        write_frames(folder, edit.frames)
        done.files.append(str(folder))
    _rescued(out, lambda path: write_video(path, edit.frames, fps))
    done.files.append(out)


def _rescued(out: str, write: Callable[[str], None]) -> None:
    """``write(out)``; where that fails (a disk full, a folder made read-only since the
    run began), the result goes to a temporary file instead, and an InputError says where."""
    try:
        write(out)
    except OSError as error:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="kdiff-differential-"))
        rescued = folder / Path(out).name
        write(str(rescued))
        raise InputError(f"could not write {out} ({error.strerror or error}); the result is in {rescued}") from None
