"""The whole edit of one image, as one library call: :func:`edit_image`.

Image and map in, finished image out, in the order the steps run: the change map at
the image's size (read, flipped once if it is a keep-map, a text map multiplied in,
grown, feathered, blurred), the region the model runs on (crop), what the model sees
there (fill), the model fitted to it, its conditioning, the sampler run through
:func:`~kdiff_differential.core.sampling.differential_edit`, then decoding, colour match and the
pixel-space composite pasted back. The command line is a shell around this function;
the same settings give the same pixels. Settings are checked before anything runs
(:class:`EditSettings`): a wrong type is a TypeError, a wrong value an
:class:`~kdiff_differential.errors.InputError` (a ValueError), each naming the keyword;
what the user should hear is an :class:`EditWarning`.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import numpy as np

from ..choices import CLOCKS, COMPAT_NAMES, COMPOSITES, CROPS, FILLS, RELEASES, SCHEDULES
from ..errors import InputError
from ..core.samplers import DEFAULT_STEPS, clock_problem, sampler_named

if TYPE_CHECKING:
    import torch

    from ..stages.cropping import Region
    from ..core.sampling import Edit
    from ..models import Model, ModelSource

# Above this many steps a run is warned of its cost: an easy typo (100000) runs for hours.
MANY_STEPS = 1000
# The keywords of edit_image that load a model given by name (the command line's model flags).
LOAD_OPTIONS = ("config", "lora", "allow_pickle", "dtype", "offload", "vae_tiling", "controlnet")


class EditWarning(UserWarning):
    """Something the user should know about an edit that still runs: a setting that has
    no effect, a map stretched to fit, nothing to change."""


def _warn(message: str) -> None:
    warnings.warn(message, EditWarning, stacklevel=3)


def _number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, whole: bool = False,
            open_low: bool = False) -> None:
    kind = "a whole number" if whole else "a number"
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name}={value!r}: give {kind}")
    if value < low or (open_low and value == low) or value > high:
        bounds = f"in {'(' if open_low else '['}{low:g}, {high:g}]" if high < math.inf else f"{'>' if open_low else '>='} {low:g}"
        raise InputError(f"{name}={value}: out of range; give {kind} {bounds}")


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise InputError(f"{name}={value!r}: give one of {', '.join(choices)}")


def _switch(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: give True or False")


@dataclass(frozen=True)
class EditSettings:
    """Every setting of :func:`edit_image` but the model, the image and the map, each
    the command line's option of the same name (dashes as underscores); checked when
    made. The command line's documentation (``docs/cli.md``) says what each does."""

    # The map: read as a keep-map, a text map, grown, feathered, blurred (in input pixels).
    keep_map: bool = False
    map_prompt: Optional[str] = None
    segmenter: Any = None
    grow: float = 0.0
    feather: float = 0.0
    blur: float = 0.0
    # What the model sees, and where it runs.
    fill: str = "original"
    crop: str = "auto"
    crop_padding: float = 0.25
    # The model's conditioning.
    prompt: str = ""
    negative: str = ""
    cfg: Optional[float] = None
    cfg_2: Optional[float] = None
    inpaint_mask: Optional[str] = None
    controls: Sequence[Any] = ()
    # The sampler run.
    sampler: str = "dpmpp_2m"
    steps: Optional[int] = None
    schedule: Optional[str] = None
    denoise: float = 1.0
    seed: Optional[int] = 0
    strength: float = 1.0
    release: str = "faithful"
    clock: str = "timestep"
    compat: Optional[str] = None
    # After decoding.
    color_match: bool = False
    composite: str = "difference"
    progress: bool = False

    def __post_init__(self) -> None:
        from ..models.controlnets import Control
        from ..models.families import INPAINT_MASKS

        for name in ("keep_map", "color_match", "progress"):
            _switch(name, getattr(self, name))
        _number("grow", self.grow)
        for name in ("feather", "blur", "crop_padding"):
            _number(name, getattr(self, name), 0)
        for name, value in (("prompt", self.prompt), ("negative", self.negative)):
            if not isinstance(value, str):
                raise TypeError(f"{name}={value!r}: give a text (str)")
        if self.map_prompt is not None and (not isinstance(self.map_prompt, str) or not self.map_prompt.strip()):
            raise InputError(f"map_prompt={self.map_prompt!r}: name what to change, such as 'the sky'")
        if (self.map_prompt is None) != (self.segmenter is None):
            raise InputError(
                "map_prompt= needs segmenter=, a CLIPSeg folder or cached Hub id (such as CIDAS/clipseg-rd64-refined)"
                if self.segmenter is None else "segmenter= is used with map_prompt=, the text that names what to change"
            )
        for name, choices in (("fill", FILLS), ("crop", CROPS), ("release", RELEASES), ("clock", CLOCKS), ("composite", COMPOSITES)):
            _choice(name, getattr(self, name), choices)
        if self.inpaint_mask is not None:
            _choice("inpaint_mask", self.inpaint_mask, INPAINT_MASKS)
        for name in ("cfg", "cfg_2"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name))
        if isinstance(self.controls, (str, bytes)) or not all(isinstance(control, Control) for control in self.controls):
            raise TypeError(f"controls={self.controls!r}: give a list of Control (one per ControlNet)")
        object.__setattr__(self, "controls", tuple(self.controls))
        self._check_sampler()
        _number("denoise", self.denoise, 0, 1, open_low=True)
        _number("strength", self.strength, 0, 1)
        if self.compat is not None:
            _choice("compat", self.compat, COMPAT_NAMES)
        if self.compat == "diffusers" and sampler_named(self.sampler)[0].takes_range:
            raise InputError(f"compat=diffusers releases by step index: sampler={self.sampler} runs a noise range, not a schedule")
        if self.compat == "diffusers" and self.strength != 1:
            raise InputError(f"compat=diffusers: the pipelines have no blend strength; strength={self.strength:g} must be 1")
        if self.seed is not None:
            _number("seed", self.seed, 0, whole=True)

    def _check_sampler(self) -> None:
        try:
            sampler, implied = sampler_named(self.sampler)
        except TypeError as error:
            raise TypeError(f"sampler={self.sampler!r}: {error}") from None
        except ValueError as error:
            raise InputError(f"sampler={self.sampler!r}: {error}") from None
        if self.schedule is not None:
            _choice("schedule", self.schedule, SCHEDULES)
        if implied is not None:
            if self.schedule is not None and self.schedule != implied:
                raise InputError(f"sampler={self.sampler!r} names the {implied} schedule and schedule={self.schedule}; give one")
            object.__setattr__(self, "schedule", implied)
        object.__setattr__(self, "sampler", sampler.name)
        problem = clock_problem(sampler, self.clock)
        if problem:
            raise InputError(f"clock={self.clock}: {problem}")
        if self.steps is not None:
            _number("steps", self.steps, 1, whole=True)
            if sampler.own_steps:
                _warn(f"sampler={sampler.name} chooses its own steps: steps={self.steps} is ignored")
                object.__setattr__(self, "steps", None)
            elif self.steps > MANY_STEPS:
                calls = self.steps * max(sampler.calls_per_step, 1)
                _warn(f"steps={self.steps} makes {calls} model calls ({self.steps // DEFAULT_STEPS}x the default "
                      f"{DEFAULT_STEPS} steps' time); results stop improving long before {MANY_STEPS}")

    def check_model(self, model: Union["Model", "ModelSource"], what: str = "image") -> None:
        """The settings against what ``model`` (loaded, or found by :func:`~kdiff_differential.models.find_model`)
        can do, before it loads: a flow model's schedule, the built-in model's missing text,
        an image model given a video (``what``: "image" or "video")."""
        if what == "video":
            if getattr(model, "frames_per_latent", None) is None:
                named = f"model={model.name}" if hasattr(model, "name") else "the model"
                raise InputError(f"{named} ({model.description}) edits images only; a video needs a video model "
                                 "(Wan 2.1 or 2.2) or the built-in model")
            for name in ("controls", "inpaint_mask"):
                if getattr(self, name):
                    raise InputError(f"{name}={getattr(self, name)!r}: for images; a video edit takes none")
        if _is_builtin(model):
            given = [f"{name}={getattr(self, name)!r}" for name in ("prompt", "negative", "cfg", "cfg_2") if getattr(self, name) not in ("", None)]
            if given:
                _warn(f"the built-in model takes no text or guidance: {', '.join(given)} ignored")
            if self.inpaint_mask is not None:
                raise InputError(f"inpaint_mask={self.inpaint_mask}: the built-in model has no inpainting channels")
            if self.controls:
                raise InputError("controls: ControlNets need a diffusers model (model=: a folder, Hub id or .safetensors file); the built-in model takes none")
        if model.flow and self.schedule not in (None, "model"):
            raise InputError(f"schedule={self.schedule}: this flow model's schedule starts at t = 1 (sigma = inf); use schedule=model")
        if model.flow and self.clock == "sigma" and self.denoise >= 1:
            raise InputError("clock=sigma: a flow model's schedule from t = 1 starts at sigma = inf, where log sigma has no range; "
                             "use clock=timestep or step")


def _is_builtin(model: Any) -> bool:
    from ..models.builtin import Builtin

    return isinstance(model, Builtin) or getattr(model, "name", None) == "builtin"


@dataclass
class ImageEdit:
    """What :func:`edit_image` gives back.

    ``image``: the result, uint8 (H, W, 3), what the command line writes. ``decoded``:
    the model's output pasted into the input (after colour match, before the composite),
    uint8 (H, W, 3). ``change_map``: the map the edit ran, float32 (H, W) in [0, 1], 1 =
    change, after every shaping step. ``edit``: the sampler run
    (:class:`~kdiff_differential.core.sampling.Edit`: its latent, wrapper and step sigmas).
    ``region``: where the model ran (:class:`~kdiff_differential.stages.cropping.Region`).
    ``seed``: the seed used. With a map that changes nothing the model is not run:
    ``decoded`` is the input and ``edit`` None.
    """

    image: np.ndarray
    decoded: np.ndarray
    change_map: np.ndarray
    edit: Optional["Edit"]
    region: "Region"
    seed: int


def load_options(options: dict[str, Any]) -> dict[str, Any]:
    """The model-loading keywords of :func:`edit_image` (``LOAD_OPTIONS``) as
    :func:`~kdiff_differential.models.open_model` takes them: LoRAs as (file, scale) pairs
    (``"FILE[:SCALE]"`` parsed), ControlNet sources as ``controlnets``."""
    from ..models.loras import check_loras, parse_lora

    loras = [parse_lora(entry) if isinstance(entry, str) else entry for entry in options.get("lora") or ()]
    allow_pickle = options.get("allow_pickle", False)
    _switch("allow_pickle", allow_pickle)
    return {
        "config": options.get("config"), "loras": check_loras(loras, allow_pickle), "allow_pickle": allow_pickle,
        "dtype": options.get("dtype"), "offload": options.get("offload", False), "vae_tiling": options.get("vae_tiling", False),
        "controlnets": list(options.get("controlnet") or ()),
    }


def change_map_at(image: np.ndarray, change_map: Any, settings: EditSettings, device: Any = None) -> np.ndarray:
    """The change map an edit of ``image`` runs, float32 (H, W) in [0, 1], 1 = change:
    ``change_map`` (a preset name, a map file, or anything
    :class:`~kdiff_differential.DifferentialDenoiser` takes) at the image's size, flipped
    if ``settings.keep_map``, times the text map of ``settings.map_prompt``, then grown,
    feathered and blurred."""
    from ..maps.reading import change_strength
    from ..maps.shaping import shape_map

    height, width = image.shape[:2]
    if isinstance(change_map, (str, Path)):
        from ..maps.presets import resolve_map

        change_map = resolve_map(str(change_map), height, width, warn=_warn)
    strength = change_strength(change_map, (height, width), keep_map=settings.keep_map)
    if settings.map_prompt is not None:
        from ..models.clipseg import prompt_map

        strength = prompt_map(image, settings.map_prompt, settings.segmenter, device=device or "cpu", change_map=strength, quiet=True)
    shaped = shape_map(strength, grow=settings.grow, feather=settings.feather, blur=settings.blur)
    return np.asarray(shaped, dtype=np.float32)


def edit_image(
    model: Union[str, Path, "Model", "ModelSource"],
    image: np.ndarray,
    change_map: Any = "gradient-x",
    *,
    device: Union[str, "torch.device", None] = None,
    **options: Any,
) -> ImageEdit:
    """Edit ``image`` (uint8 (H, W, 3)) where ``change_map`` says, as much as it says (1 = change).

    ``model``: ``"builtin"``, a diffusers folder, Hub id or single file (loaded on
    ``device`` with the keywords ``config``, ``lora``, ``allow_pickle``, ``dtype``,
    ``offload``, ``vae_tiling``, ``controlnet``), or a model loaded once by
    :func:`~kdiff_differential.models.open_model` and reused. ``change_map``: a preset
    name, a map file, or anything :class:`~kdiff_differential.DifferentialDenoiser` takes.
    ``options``: the :class:`EditSettings`, each named as its command-line option
    (``crop_padding=0.5``, ``color_match=True``, ``seed=None`` for a random seed).
    """
    from ..stages.cropping import plan_crop, whole
    from ..stages.fills import fill_pixels
    from ..files.images import require_rgb

    require_rgb(image, "image")
    settings, model, seed = open_edit(model, options, device, "image")
    device = getattr(model, "device", device)

    # 1. The change map at the image's size.
    strength = change_map_at(image, change_map, settings, device)
    height, width = image.shape[:2]
    if not strength.any():
        _warn("the change map is 0 everywhere (after grow, feather and blur): nothing changes, and the model is not run")
        return ImageEdit(image.copy(), image.copy(), strength, None, whole(height, width), seed)
    # 2. Where the model runs: the change's box, at the model's native size, or the whole image.
    region = plan_crop(strength, settings.crop, settings.crop_padding, lambda: model.native_side, size=(height, width))
    box_image, box_strength = region.cut(image), region.cut_map(strength)
    # 3. What the model sees under the region, fitted to the model (encoded).
    fitted = model.fit(region.to_work(fill_pixels(box_image, box_strength, settings.fill, seed)))
    # 4-5. The conditioning and the sampler run, with Differential Diffusion around the model.
    edit = run_sampler(fitted, box_strength, settings, seed, region)
    # 6. Decoded at the box's size, colour-matched, composited over the original, pasted back.
    decoded = region.from_work(fitted.decode(edit.result))
    if settings.color_match:
        from ..stages.color_matching import match_colors

        decoded = match_colors(decoded, box_image, box_strength)
    from ..stages.compositing import composite

    result = region.paste(image, composite(box_image, decoded, box_strength, settings.composite))
    return ImageEdit(result, region.paste(image, decoded), strength, edit, region, seed)


def open_edit(model: Any, options: dict[str, Any], device: Any, what: str) -> tuple[EditSettings, "Model", int]:
    """The settings of an edit (``options``, checked), its model (loaded on ``device`` when
    given by name, with the loading keywords among ``options``) and its seed (drawn when
    None). ``what`` the edit takes ("image", "video"), for the model's refusal."""
    from ..models import ModelSource, find_model, open_model, refuse_for_builtin

    loading = {name: options.pop(name) for name in LOAD_OPTIONS if name in options}
    settings = EditSettings(**options)
    seed = random.SystemRandom().randrange(2**32) if settings.seed is None else settings.seed
    if isinstance(model, (str, Path)):
        if model == "builtin":
            refuse_for_builtin(loading)
        load = load_options(loading)
        model = find_model(model, config=load["config"], allow_pickle=load["allow_pickle"])
    elif loading:
        raise ValueError(f"{', '.join(f'{name}=' for name in loading)}: for loading a model by name; this model is loaded already")
    else:
        load = {}
    settings.check_model(model, what)
    if isinstance(model, ModelSource):
        model = open_model(model, _device(device), **load)
    return settings, model, seed


def run_sampler(fitted: Any, strength: np.ndarray, settings: EditSettings, seed: int, region: "Region", frames_per_latent: int = 1) -> "Edit":
    """Steps 4 and 5 of an edit: the conditioning of ``fitted`` (an
    :class:`~kdiff_differential.models.ImageModel`) with the model's own defaults where
    none is given, and the sampler run through
    :func:`~kdiff_differential.core.sampling.differential_edit` with the map ``strength`` at the
    model's input (H, W), or one per frame (T, H, W) for a clip's latent, whose frames
    the model merges ``frames_per_latent`` at a time."""
    from ..core.sampling import differential_edit

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
        compat=settings.compat, extra_args=extra_args, progress=settings.progress,
        frames_per_latent=frames_per_latent,
    )


def _device(device: Any) -> "torch.device":
    """``device``, or CUDA when there is one and the CPU otherwise (None or ``"auto"``)."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r}: give 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device") from None


def setting_names() -> tuple[str, ...]:
    """The keywords of :func:`edit_image`: the settings and the model-loading options."""
    return (*(field.name for field in fields(EditSettings)), *LOAD_OPTIONS)
