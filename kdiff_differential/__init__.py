"""Differential Diffusion for every k-diffusion sampler.

:func:`edit_image` edits an image where a change map says (per-pixel strength in
[0, 1], 1 = change, 0 = keep), the whole edit in one call, on the built-in model or a
diffusers one; :func:`edit_video` edits a clip's frames (a still map or one per frame).
Below it: wrap a k-diffusion denoiser in :class:`DifferentialDenoiser` with the original latent
and a change map (per-pixel strength in [0, 1], 1 = change, 0 = keep), and hand the
wrapper to any sampler; :func:`differential_edit` does that whole run by the sampler's
name; :func:`composite` puts the original back in pixel space after decoding.

Every name below is loaded on first use, so ``import kdiff_differential`` imports
neither torch nor k-diffusion (the command line answers ``--help`` at once), and it
changes no warning filter; ``with quiet_warnings():`` hides the noise of k-diffusion's
dependencies where you ask for it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .choices import CLOCKS, RELEASES, SCHEDULES
    from .stages.color_matching import match_colors
    from .stages.compositing import composite
    from .stages.cropping import plan_crop
    from .core.denoiser import DifferentialDenoiser
    from .core.sampling import Edit, differential_edit
    from .stages.fills import fill_pixels
    from .editing.image_edit import EditSettings, EditWarning, ImageEdit, edit_image
    from .core.guidance import CFGDenoiser
    from .maps.reading import latent_map
    from .models import ImageModel, Model, load_model, load_pipeline, open_model
    from .models.controlnets import Control
    from .models.flow import FlowDenoiser
    from .maps.shaping import shape_map
    from .quiet import quiet_warnings
    from .core.samplers import SAMPLERS
    from .core.schedules import make_sigmas
    from .models.clipseg import prompt_map
    from .editing.video_edit import VideoEdit, edit_video
    from .files.video import read_map_video, read_video, write_frames, write_video

# Each public name and the module that defines it.
_EXPORTS = {
    "CLOCKS": ".choices",
    "RELEASES": ".choices",
    "SCHEDULES": ".choices",
    "SAMPLERS": ".core.samplers",
    "CFGDenoiser": ".core.guidance",
    "Control": ".models.controlnets",
    "DifferentialDenoiser": ".core.denoiser",
    "Edit": ".core.sampling",
    "EditSettings": ".editing.image_edit",
    "EditWarning": ".editing.image_edit",
    "ImageEdit": ".editing.image_edit",
    "Model": ".models",
    "edit_image": ".editing.image_edit",
    "edit_video": ".editing.video_edit",
    "VideoEdit": ".editing.video_edit",
    "open_model": ".models",
    "FlowDenoiser": ".models.flow",
    "ImageModel": ".models",
    "composite": ".stages.compositing",
    "differential_edit": ".core.sampling",
    "load_model": ".models",
    "load_pipeline": ".models",
    "make_sigmas": ".core.schedules",
    "latent_map": ".maps.reading",
    "quiet_warnings": ".quiet",
    "shape_map": ".maps.shaping",
    "fill_pixels": ".stages.fills",
    "match_colors": ".stages.color_matching",
    "plan_crop": ".stages.cropping",
    "prompt_map": ".models.clipseg",
    "read_video": ".files.video",
    "read_map_video": ".files.video",
    "write_video": ".files.video",
    "write_frames": ".files.video",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


# Old names, each warned of once: the map's two steps are named for what they do.
_RENAMED = {"prepare_map": "shape_map", "prepare_change_map": "latent_map"}


def __getattr__(name: str) -> Any:
    if name in _RENAMED:
        from .deprecation import renamed

        return renamed(name, _RENAMED[name], getattr(import_module(_EXPORTS[_RENAMED[name]], __name__), _RENAMED[name]))
    if name not in _EXPORTS:
        raise AttributeError(f"module 'kdiff_differential' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
