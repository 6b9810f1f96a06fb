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
    from .color_matching import match_colors
    from .compositing import composite
    from .cropping import plan_crop
    from .denoiser import DifferentialDenoiser
    from .edit import Edit, differential_edit
    from .fills import fill_pixels
    from .image_edit import EditSettings, EditWarning, ImageEdit, edit_image
    from .guidance import CFGDenoiser
    from .maps import latent_map
    from .models import ImageModel, Model, load_model, load_pipeline, open_model
    from .models.controlnets import Control
    from .models.flow import FlowDenoiser
    from .preparation import shape_map
    from .quiet import quiet_warnings
    from .sampler_table import SAMPLERS
    from .schedules import make_sigmas
    from .segmentation import prompt_map
    from .video_edit import VideoEdit, edit_video
    from .video_files import read_map_video, read_video, write_frames, write_video

# Each public name and the module that defines it.
_EXPORTS = {
    "CLOCKS": ".choices",
    "RELEASES": ".choices",
    "SCHEDULES": ".choices",
    "SAMPLERS": ".sampler_table",
    "CFGDenoiser": ".guidance",
    "Control": ".models.controlnets",
    "DifferentialDenoiser": ".denoiser",
    "Edit": ".edit",
    "EditSettings": ".image_edit",
    "EditWarning": ".image_edit",
    "ImageEdit": ".image_edit",
    "Model": ".models",
    "edit_image": ".image_edit",
    "edit_video": ".video_edit",
    "VideoEdit": ".video_edit",
    "open_model": ".models",
    "FlowDenoiser": ".models.flow",
    "ImageModel": ".models",
    "composite": ".compositing",
    "differential_edit": ".edit",
    "load_model": ".models",
    "load_pipeline": ".models",
    "make_sigmas": ".schedules",
    "latent_map": ".maps",
    "quiet_warnings": ".quiet",
    "shape_map": ".preparation",
    "fill_pixels": ".fills",
    "match_colors": ".color_matching",
    "plan_crop": ".cropping",
    "prompt_map": ".segmentation",
    "read_video": ".video_files",
    "read_map_video": ".video_files",
    "write_video": ".video_files",
    "write_frames": ".video_files",
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
