"""The whole edit in one call, for an image or a clip: one path, in the order its steps run.

An image is a clip of one frame. :class:`Editor` holds a model and the settings of its
edits, checked against each other once; :meth:`Editor.edit_image` and
:meth:`Editor.edit_video` (and the functions :func:`edit_image` and :func:`edit_video`)
are thin doors into :meth:`Editor._edit`, which runs the six steps: the change map of
every frame, where the model runs (crop), what it sees there (fill) fitted to the model,
the conditioning and one sampler run with Differential Diffusion around the model, then
decoding, colour match and the composite pasted back, so that kept pixels are the
input's bytes in every frame.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from ..errors import InputError, warn
from ..maps.change_map import ChangeMap
from ..pixels import as_frames, writable
from .settings import EditSettings, check_seed

if TYPE_CHECKING:
    import torch

    from ..core.sampling import SamplerRun
    from ..models import ImageModel, Model, ModelSource
    from ..stages.cropping import Region

ModelLike = Union[str, Path, "ModelSource", "Model"]
Device = Union[str, "torch.device", None]


@dataclass
class ImageEdit:
    """What an image edit gives back. ``image``: the result, uint8 (H, W, 3), what the
    command line writes. ``decoded``: the model's output pasted into the input (after
    colour match, before the composite). ``change_map``: the map the edit ran, float32
    (H, W), 1 = change. ``run``: the sampler run (its latent, wrapper and step sigmas;
    None when nothing changed, and the model did not run). ``region``: where the model
    ran. ``seed``: the seed used."""

    image: np.ndarray
    decoded: np.ndarray
    change_map: np.ndarray
    run: Optional["SamplerRun"]
    region: "Region"
    seed: int


@dataclass
class VideoEdit:
    """What a clip's edit gives back, as :class:`ImageEdit` frame by frame: ``frames``
    uint8 (T, H, W, 3), as many as the input; ``decoded``; ``change_map`` float32
    (T, H, W); ``run`` (its latent (1, C, F, h, w)); ``region``; ``seed``; ``padded``:
    the frames added to reach a count the model takes (trimmed from the result)."""

    frames: np.ndarray
    decoded: np.ndarray
    change_map: np.ndarray
    run: Optional["SamplerRun"]
    region: "Region"
    seed: int
    padded: int = 0


def frame_count(frames: int, frames_per_latent: int) -> int:
    """The fewest frames, at least ``frames``, that a model merging ``frames_per_latent``
    frames per latent frame (the first alone) takes: k * frames_per_latent + 1."""
    return frames if frames_per_latent == 1 else -(-(frames - 1) // frames_per_latent) * frames_per_latent + 1


class Editor:
    """A model and the settings of its edits, checked against each other once.

    ``model``: ``"builtin"``, a diffusers folder, Hub id or single file (found now,
    loaded on ``device`` at the first edit and kept), a
    :func:`~kdiff_differential.models.find_model` result (with its loading options) or a
    model loaded by :func:`~kdiff_differential.models.open_model`. ``settings``: the
    :class:`EditSettings` (default: every default). It pickles without its loaded model,
    so that a worker process opens the model itself.
    """

    def __init__(self, model: ModelLike = "builtin", settings: Optional[EditSettings] = None, *, device: Device = None) -> None:
        from ..models import find_model

        if settings is not None and not isinstance(settings, EditSettings):
            raise TypeError(f"settings={settings!r}: give an EditSettings")
        self.settings = EditSettings() if settings is None else settings
        self.device = device
        found = find_model(model) if isinstance(model, (str, Path)) else model
        self.settings.check_model(found)
        self._given = found
        self._model: Optional["Model"] = None

    @property
    def model(self) -> "Model":
        """The model, loaded on first use (a found model once per process: kept)."""
        if self._model is None:
            from ..models import ModelSource, open_model

            given = self._given
            self._model = open_model(given, self.device, keep=True) if isinstance(given, ModelSource) else given
        return self._model

    def __getstate__(self) -> dict[str, Any]:
        from ..models import ModelSource

        return {**self.__dict__, "_model": None} if isinstance(self._given, ModelSource) else self.__dict__

    def edit_image(self, image: np.ndarray, change_map: Any = "gradient-x", *, seed: Optional[int] = 0) -> ImageEdit:
        """Edit ``image`` (uint8 (H, W, 3)) where ``change_map`` says, as much as it says:
        a preset name, a map file, or anything
        :class:`~kdiff_differential.DifferentialDenoiser` takes ((H', W'), 1 = change).
        ``seed`` None draws one."""
        frames, clip = as_frames(image, "image")
        if clip:
            raise TypeError(f"image must be a uint8 array (H, W, 3), got a clip of shape {image.shape}; use edit_video")
        done = self._edit(frames, change_map, seed, still=True)
        return ImageEdit(done.frames[0], done.decoded[0], done.change_map[0], done.run, done.region, done.seed)

    def edit_video(self, frames: np.ndarray, change_map: Any = "gradient-x", *, seed: Optional[int] = 0) -> VideoEdit:
        """Edit a clip's ``frames`` (uint8 (T, H, W, 3)) where ``change_map`` says, and give
        back as many frames. ``change_map``: one still map for every frame (anything
        :meth:`edit_image` takes), or one per frame (a map video file, a list of T maps, or
        an array (T, H, W) or (T, H, W, 3)). ``seed`` None draws one."""
        clip, is_clip = as_frames(frames, "frames")
        if not is_clip:
            raise TypeError(f"frames must be a uint8 array (T, H, W, 3) with T >= 1, got an image of shape {frames.shape}")
        self.settings.check_clip(self._given)
        return self._edit(clip, change_map, seed, still=False)

    def _edit(self, frames: np.ndarray, change_map: Any, seed: Optional[int], still: bool) -> VideoEdit:
        """The edit of ``frames`` (T, H, W, 3); ``still``: an image, which the model fits as one."""
        from ..stages.color_matching import match_colors
        from ..stages.compositing import composite
        from ..stages.cropping import plan_crop, whole
        from ..stages.fills import fill_pixels

        check_seed(seed)
        seed = random.SystemRandom().randrange(2**32) if seed is None else seed
        settings, model, frames = self.settings, self.model, writable(frames)
        count, size = len(frames), frames.shape[1:3]

        # 1. The change map of every frame, at the frames' size.
        maps = self._change_maps(frames, change_map, per_frame=not still)
        if not maps.any():
            where = "everywhere" if still else "in every frame"
            warn(f"the change map is 0 {where} (after grow, feather and blur): nothing changes, and the model is not run")
            return VideoEdit(frames.copy(), frames.copy(), maps.values, None, whole(*size), seed)
        # 2. Where the model runs: the box of every frame's change, at the model's native size, or the whole frame.
        region = plan_crop(maps, settings.crop, settings.crop_padding, lambda: model.native_side, size=size)
        box_frames, box_maps = region.cut(frames), region.cut_map(maps)
        # 3. What the model sees there, padded with the last frame to a count the model takes, fitted (encoded).
        seen = region.to_work(fill_pixels(box_frames, box_maps, settings.fill, seed))
        merged = 1 if still else model.frames_per_latent or 1
        padded = frame_count(count, merged) - count
        if padded:
            warn(f"{count} frames: this model takes {merged}k + 1 frames; the last frame is repeated {padded} times "
                 f"to make {count + padded}, and the result trimmed back to {count}")
            seen = np.concatenate([seen, np.repeat(seen[-1:], padded, axis=0)])
        fitted = model.fit(seen[0] if still else seen)
        # 4-5. The conditioning and one sampler run, with Differential Diffusion around the model.
        work_maps = box_maps.padded(count + padded).values
        run = self._denoise(fitted, work_maps[0] if still else work_maps, seed, region, merged)
        # 6. Decoded (and trimmed), colour-matched over every frame at once, composited over the original, pasted back.
        decoded = fitted.decode(run.result)
        decoded = region.from_work(decoded[None] if still else decoded[:count])
        if settings.color_match:
            decoded = match_colors(decoded, box_frames, box_maps)
        result = region.paste(frames, composite(box_frames, decoded, box_maps, settings.composite))
        return VideoEdit(result, region.paste(frames, decoded), maps.values, run, region, seed, padded)

    def _change_maps(self, frames: np.ndarray, change_map: Any, per_frame: bool) -> ChangeMap:
        """Step 1: the map of each frame, (T, H, W): a still ``change_map`` for every frame,
        or one per frame where ``per_frame`` allows; each read, flipped if it is a
        keep-map, times the text map of ``map_prompt`` (read from each frame), then grown,
        feathered and blurred."""
        from ..maps.reading import change_strength
        from ..maps.shaping import shape_map

        settings = self.settings
        maps = _per_frame(change_map, len(frames)) if per_frame else None
        segmenter = None
        if settings.map_prompt is not None:
            from ..models.clipseg import load_segmenter

            given = settings.segmenter
            segmenter = load_segmenter(given, getattr(self.model, "device", "cpu"), quiet=True) if isinstance(given, str) else given

        def one(image: np.ndarray, spec: Any) -> np.ndarray:
            strength: Any = change_strength(resolve_map(spec, image.shape[:2]), image.shape[:2], keep_map=settings.keep_map)
            if segmenter is not None and settings.map_prompt is not None:
                from ..models.clipseg import prompt_map

                strength = prompt_map(image, settings.map_prompt, segmenter, device=getattr(self.model, "device", "cpu"),
                                      change_map=strength)
            return shape_map(strength, grow=settings.grow, feather=settings.feather, blur=settings.blur)

        if maps is None and segmenter is None:
            return ChangeMap(np.repeat(one(frames[0], change_map)[None], len(frames), axis=0))
        specs = maps if maps is not None else [change_map] * len(frames)
        return ChangeMap(np.stack([one(frame, spec) for frame, spec in zip(frames, specs)]))

    def _denoise(self, fitted: "ImageModel", strength: np.ndarray, seed: int, region: "Region", frames_per_latent: int) -> "SamplerRun":
        """Steps 4 and 5: the conditioning of ``fitted`` with the model's own defaults where
        none is given, and the sampler run with the map ``strength`` at the model's input
        (H, W), or one per frame (T, H, W) for a clip's latent."""
        from ..core.samplers import DEFAULT_STEPS, sampler_named
        from ..core.sampling import differential_edit

        settings = self.settings
        schedule = settings.schedule or fitted.schedule
        steps = settings.steps if settings.steps is not None or sampler_named(settings.sampler)[0].own_steps else fitted.steps
        extra: dict[str, Any] = {}
        if settings.controls:
            from ..core.schedules import make_sigmas

            # The windows are fractions of the schedule the sampler will run (range samplers: of the same steps').
            extra = {"controls": [replace(control, image=region.align(control.pixels())) for control in settings.controls],
                     "sigmas": make_sigmas(fitted.denoiser, steps or DEFAULT_STEPS, schedule, settings.denoise)}
        given = {name: getattr(settings, name) for name in ("inpaint_mask", "cfg_2") if getattr(settings, name) is not None}
        extra_args = fitted.extra_args(settings.prompt, settings.negative, settings.cfg, change_map=strength, **given, **extra)
        return differential_edit(
            fitted.denoiser, fitted.latent, strength, sampler=settings.sampler, steps=steps, schedule=schedule,
            denoise=settings.denoise, seed=seed, strength=settings.strength, clock=settings.clock, release=settings.release,
            compat=settings.compat, extra_args=extra_args, progress=settings.progress, frames_per_latent=frames_per_latent,
        )


def resolve_map(spec: Any, size: tuple[int, ...]) -> Any:
    """A map given by name as change strengths at ``size`` = (H, W): a preset, or a map
    file (read as :func:`~kdiff_differential.files.images.read_map` says; an
    :class:`~kdiff_differential.errors.EditWarning` when its aspect is not the image's,
    stretched to fit). Anything else comes back as it is."""
    if not isinstance(spec, (str, Path)):
        return spec
    from ..choices import PRESETS
    from ..files.images import read_map
    from ..maps.presets import preset_map

    if str(spec) in PRESETS:
        return preset_map(str(spec), *size)
    if not Path(spec).exists():
        raise InputError(f"change_map={spec}: neither an existing file nor a preset ({', '.join(PRESETS)})")
    strength = read_map(str(spec))
    (height, width), (rows, columns) = size, strength.shape
    if abs(columns * height - width * rows) > max(height, width, rows, columns):
        warn(f"the map is {columns}x{rows} but the image {width}x{height}: the map is stretched to fit")
    return strength


def _per_frame(change_map: Any, count: int) -> Optional[list[Any]]:
    """``change_map``'s maps one per frame, or None for one still map: a map video (a file
    of a video suffix), a sequence of ``count`` maps, or an array or tensor whose first
    axis holds the frames ((T, H, W), or colour frames (T, H, W, 3|4); a 3-D array whose
    last axis is 3 or 4, but not its first, is one colour map)."""
    if isinstance(change_map, (str, Path)):
        from ..files.video import is_video, read_map_video

        if not is_video(change_map):
            return None
        frames = read_map_video(change_map)
        if len(frames) != count:
            raise InputError(f"change_map={change_map}: a map video of {len(frames)} frames for a clip of {count}; "
                             "give one map per frame, or a still map")
        return list(frames)
    if isinstance(change_map, (list, tuple)):
        if len(change_map) != count:
            raise InputError(f"change_map: {len(change_map)} maps for a clip of {count} frames; give one per frame, or one still map")
        return list(change_map)
    shape = tuple(getattr(change_map, "shape", ()))
    colour_image = len(shape) == 3 and shape[-1] in (3, 4) and shape[0] != count
    if len(shape) == 4 or (len(shape) == 3 and not colour_image):
        if shape[0] != count:
            raise InputError(f"change_map: maps of {shape[0]} frames for a clip of {count}; give one per frame, or one still map")
        return list(change_map)
    return None


def edit_image(model: ModelLike, image: np.ndarray, change_map: Any = "gradient-x", settings: Optional[EditSettings] = None, *,
               seed: Optional[int] = 0, device: Device = None) -> ImageEdit:
    """Edit ``image`` (uint8 (H, W, 3)) where ``change_map`` says, as much as it says (1 =
    change), on ``model`` with ``settings``: :meth:`Editor.edit_image` of a one-off
    :class:`Editor`. ``seed`` None draws one (``ImageEdit.seed``)."""
    return Editor(model, settings, device=device).edit_image(image, change_map, seed=seed)


def edit_video(model: ModelLike, frames: np.ndarray, change_map: Any = "gradient-x", settings: Optional[EditSettings] = None, *,
               seed: Optional[int] = 0, device: Device = None) -> VideoEdit:
    """Edit a clip's ``frames`` (uint8 (T, H, W, 3)) where ``change_map`` says (a still map,
    or one per frame), and give back as many frames: :meth:`Editor.edit_video` of a
    one-off :class:`Editor`."""
    return Editor(model, settings, device=device).edit_video(frames, change_map, seed=seed)
