"""The change map an edit runs, checked once: :class:`ChangeMap`, float32 (T, H, W) in
[0, 1], 1 = change, one frame for an image. The steps around the model call take it as
it is; anything else they are given is read and checked by :func:`frame_strengths`."""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from .reading import strength_array


class ChangeMap:
    """The change strength of each pixel of each frame, ``values`` float32 (T, H, W) in
    [0, 1], 1 = change; checked when made (ValueError otherwise)."""

    __slots__ = ("values",)

    def __init__(self, values: np.ndarray) -> None:
        if not isinstance(values, np.ndarray) or values.dtype != np.float32 or values.ndim != 3 or 0 in values.shape:
            raise ValueError(f"a ChangeMap holds float32 (T, H, W), got {getattr(values, 'dtype', type(values).__name__)} "
                             f"of shape {getattr(values, 'shape', None)}")
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ValueError("a ChangeMap holds strengths in [0, 1] (1 = change)")
        self.values = values

    @classmethod
    def _checked(cls, values: np.ndarray) -> "ChangeMap":
        """A map of values taken from a checked one (a crop, a union): not checked again."""
        made = object.__new__(cls)
        made.values = values
        return made

    @property
    def frames(self) -> int:
        return self.values.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W)."""
        return self.values.shape[1], self.values.shape[2]

    def any(self) -> bool:
        """Whether any pixel of any frame changes."""
        return bool(self.values.any())

    def union(self) -> "ChangeMap":
        """One frame: each pixel's largest strength over the frames."""
        return ChangeMap._checked(self.values.max(axis=0, keepdims=True))

    def crop(self, top: int, left: int, height: int, width: int) -> "ChangeMap":
        """The box of rows ``top:top + height`` and columns ``left:left + width`` of every frame."""
        return ChangeMap._checked(self.values[:, top : top + height, left : left + width])

    def padded(self, frames: int) -> "ChangeMap":
        """The map with its last frame repeated to ``frames`` frames (a model's frame count)."""
        extra = frames - self.frames
        return self if extra <= 0 else ChangeMap._checked(np.concatenate([self.values, np.repeat(self.values[-1:], extra, axis=0)]))


MapLike = Union[ChangeMap, Any]


def frame_strengths(change_map: MapLike, size: tuple[int, ...], frames: int = 1) -> np.ndarray:
    """``change_map`` as float64 (frames, H, W) at ``size`` = (H, W): a :class:`ChangeMap`
    of that shape as it is; else one map (h, w) for every frame, or ``frames`` maps
    (frames, h, w), each checked and stretched as :func:`~.reading.strength_array` does."""
    if isinstance(change_map, ChangeMap):
        if change_map.size != tuple(size) or change_map.frames not in (1, frames):
            raise ValueError(f"change_map is {change_map.frames} x {change_map.size}, the pixels {frames} x {tuple(size)}")
        values = change_map.values.astype(np.float64)
        return values if change_map.frames == frames else np.repeat(values, frames, axis=0)
    if frames > 1 and np.ndim(change_map) == 3:
        if len(change_map) != frames:
            raise ValueError(f"change_map holds {len(change_map)} maps for {frames} frames; give one per frame, or one for all")
        return np.stack([strength_array(frame_map, size) for frame_map in change_map])
    return np.repeat(strength_array(change_map, size)[None], frames, axis=0)
