"""The whole edit of a video clip, as one library call: :func:`edit_video`.

The steps of :func:`~kdiff_differential.edit_image`, on a clip: the change map of each
frame (a still map for every frame, or one per frame), the region over every frame's
change, what the model sees there, the frames padded to a count the model takes (Wan
merges 4 frames into each latent frame after the first: 4k + 1 frames), one sampler run
over the clip's latent (a latent frame takes the strongest change of the frames it
merges, so that a frame that must change is never frozen), then the frames decoded and
trimmed back, colour-matched with one correction for the whole clip (so that it cannot
flicker), and composited frame by frame, so that kept pixels are the input's bytes in
every frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np

from ..errors import InputError
from .image_edit import EditSettings, _warn, change_map_at, open_edit, run_sampler

if TYPE_CHECKING:
    import torch

    from ..stages.cropping import Region
    from ..core.sampling import Edit
    from ..models import Model, ModelSource


@dataclass
class VideoEdit:
    """What :func:`edit_video` gives back: as :class:`~kdiff_differential.ImageEdit`, frame
    by frame. ``frames``: the result, uint8 (T, H, W, 3), as many frames as the input.
    ``decoded``: the model's output pasted into the input (after colour match, before the
    composite). ``change_map``: the map of each frame the edit ran, float32 (T, H, W), 1 =
    change. ``edit``: the sampler run (its latent (1, C, F, h, w); None when nothing
    changed). ``region``: where the model ran, in every frame. ``seed``: the seed used.
    ``padded``: the frames added to reach a count the model takes (trimmed from the result).
    """

    frames: np.ndarray
    decoded: np.ndarray
    change_map: np.ndarray
    edit: Optional["Edit"]
    region: "Region"
    seed: int
    padded: int = 0


def frame_count(frames: int, frames_per_latent: int) -> int:
    """The fewest frames, at least ``frames``, that a model merging ``frames_per_latent``
    frames per latent frame (the first alone) takes: k * frames_per_latent + 1."""
    return frames if frames_per_latent == 1 else -(-(frames - 1) // frames_per_latent) * frames_per_latent + 1


def _require_frames(frames: Any) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or not len(frames):
        raise TypeError(f"frames must be a uint8 array (T, H, W, 3) with T >= 1, got {getattr(frames, 'dtype', type(frames).__name__)} "
                        f"of shape {getattr(frames, 'shape', None)}")
    return frames


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


def clip_change_map(frames: np.ndarray, change_map: Any, settings: EditSettings, device: Any = None) -> np.ndarray:
    """The change map of each frame an edit of ``frames`` (T, H, W, 3) runs, float32
    (T, H, W) in [0, 1], 1 = change: a still ``change_map`` (anything
    :func:`~kdiff_differential.editing.image_edit.change_map_at` takes) for every frame, or one
    per frame (see :func:`edit_video`), each shaped as ``settings`` say. A text map
    (``map_prompt``) is read from every frame."""
    maps = _per_frame(change_map, len(frames))
    if maps is None and settings.map_prompt is None:
        still = change_map_at(frames[0], change_map, settings, device)
        return np.repeat(still[None], len(frames), axis=0)
    maps = maps if maps is not None else [change_map] * len(frames)
    return np.stack([change_map_at(frame, frame_map, settings, device) for frame, frame_map in zip(frames, maps)])


def edit_video(
    model: Union[str, Path, "Model", "ModelSource"],
    frames: np.ndarray,
    change_map: Any = "gradient-x",
    *,
    device: Union[str, "torch.device", None] = None,
    **options: Any,
) -> VideoEdit:
    """Edit a clip's ``frames`` (uint8 (T, H, W, 3)) where ``change_map`` says, as much as it
    says (1 = change), and give back as many frames.

    ``model``: ``"builtin"``, a video model's diffusers folder, Hub id or single file (Wan
    2.1 / 2.2), or a model loaded by :func:`~kdiff_differential.models.open_model`.
    ``change_map``: one still map for every frame (a preset name, a map image file, or
    anything :func:`~kdiff_differential.edit_image` takes), or one per frame (a map video
    file, a list of T maps, or an array (T, H, W) or (T, H, W, 3)). ``options``: the
    settings of :func:`~kdiff_differential.edit_image` (ControlNets and inpainting masks
    excepted), and its model-loading keywords.
    """
    from ..stages.compositing import composite
    from ..stages.cropping import plan_crop, whole
    from ..stages.fills import fill_pixels

    frames = _require_frames(frames)
    settings, model, seed = open_edit(model, options, device, "video")
    device = getattr(model, "device", device)
    count, (height, width) = len(frames), frames.shape[1:3]

    # 1. The change map of each frame, at the frames' size.
    strength = clip_change_map(frames, change_map, settings, device)
    if not strength.any():
        _warn("the change map is 0 in every frame (after grow, feather and blur): nothing changes, and the model is not run")
        return VideoEdit(frames.copy(), frames.copy(), strength, None, whole(height, width), seed)
    # 2. Where the model runs: the box of every frame's change (the same in each), or the whole frame.
    region = plan_crop(strength.max(axis=0), settings.crop, settings.crop_padding, lambda: model.native_side, size=(height, width))
    box_frames = np.stack([region.cut(frame) for frame in frames])
    box_strength = np.stack([region.cut_map(frame_map) for frame_map in strength])
    # 3. What the model sees, padded with the last frame to a count the model takes, fitted (encoded).
    seen = np.stack([region.to_work(fill_pixels(frame, frame_map, settings.fill, seed)) for frame, frame_map in zip(box_frames, box_strength)])
    merged = model.frames_per_latent
    padded = frame_count(count, merged) - count
    if padded:
        _warn(f"{count} frames: this model takes {merged}k + 1 frames; the last frame is repeated {padded} times "
              f"to make {count + padded}, and the result trimmed back to {count}")
        seen = np.concatenate([seen, np.repeat(seen[-1:], padded, axis=0)])
    fitted = model.fit(seen)
    work_strength = np.concatenate([box_strength, np.repeat(box_strength[-1:], padded, axis=0)])
    # 4-5. The conditioning and one sampler run over the clip's latent.
    edit = run_sampler(fitted, work_strength, settings, seed, region, frames_per_latent=merged)
    # 6. Decoded and trimmed, colour-matched over the whole clip, composited and pasted back frame by frame.
    decoded = np.stack([region.from_work(frame) for frame in fitted.decode(edit.result)[:count]])
    if settings.color_match:
        from ..stages.color_matching import match_colors

        decoded = match_colors(decoded, box_frames, box_strength)
    result = np.stack([
        region.paste(frame, composite(box, out, frame_map, settings.composite))
        for frame, box, out, frame_map in zip(frames, box_frames, decoded, box_strength)
    ])
    pasted = np.stack([region.paste(frame, out) for frame, out in zip(frames, decoded)])
    return VideoEdit(result, pasted, strength, edit, region, seed, padded)
