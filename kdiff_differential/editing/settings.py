"""The settings of an edit, checked once when made: :class:`EditSettings`.

Each setting is the command line's option of the same name (``crop_padding`` is
``--crop-padding``); ``docs/cli.md`` says what each does. A wrong type is a TypeError, a
wrong value an :class:`~kdiff_differential.errors.InputError` (a ValueError), each naming
the setting; what the user should hear about an edit that still runs is an
:class:`~kdiff_differential.errors.EditWarning`. The sampler's rules (which clock a sampler can run, what a compat
policy allows, a sampler that chooses its own steps) are the core's, read here so that
they are said before a model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from ..choices import CLOCKS, COMPAT_NAMES, COMPOSITES, CROPS, FILLS, RELEASES, SCHEDULES
from ..core.samplers import DEFAULT_STEPS, MAX_SEED, clock_problem, ignored_steps, sampler_named
from ..errors import InputError, check_choice, check_number, check_switch, warn

if TYPE_CHECKING:
    from ..models import Model, ModelSource
    from ..models.controlnets import Control

# Above this many steps a run is warned of its cost: an easy typo (100000) runs for hours.
MANY_STEPS = 1000


def check_seed(seed: Any) -> None:
    """TypeError or InputError naming ``seed`` unless it is None (draw one) or a whole
    number that torch's generators take, in [0, 2**64)."""
    if seed is not None:
        check_number("seed", seed, 0, MAX_SEED, whole=True)


@dataclass(frozen=True)
class EditSettings:
    """Every setting of an edit but the model, the image, the map and the seed, each the
    command line's option of the same name (dashes as underscores; ``docs/cli.md``).
    Checked when made: a TypeError or InputError names the setting."""

    # The map: read as a keep-map, a text map, grown, feathered, blurred (in input pixels).
    keep_map: bool = False
    map_prompt: Optional[str] = None
    segmenter: Union[str, tuple[Any, Any], None] = None
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
    controls: Sequence["Control"] = ()
    # The sampler run.
    sampler: str = "dpmpp_2m"
    steps: Optional[int] = None
    schedule: Optional[str] = None
    denoise: float = 1.0
    strength: float = 1.0
    release: str = "faithful"
    clock: str = "timestep"
    compat: Optional[str] = None
    # After decoding.
    color_match: bool = False
    composite: str = "difference"
    progress: bool = False

    def __post_init__(self) -> None:
        self._check_map()
        self._check_conditioning()
        self._check_sampler()
        for name in ("color_match", "progress"):
            check_switch(name, getattr(self, name))
        for name, choices in (("fill", FILLS), ("crop", CROPS), ("composite", COMPOSITES)):
            check_choice(name, getattr(self, name), choices)
        check_number("crop_padding", self.crop_padding, 0)

    def _check_map(self) -> None:
        check_switch("keep_map", self.keep_map)
        check_number("grow", self.grow, unit=" of pixels")
        for name in ("feather", "blur"):
            check_number(name, getattr(self, name), 0, unit=" of pixels")
        if self.map_prompt is not None and (not isinstance(self.map_prompt, str) or not self.map_prompt.strip()):
            raise InputError(f"map_prompt={self.map_prompt!r}: name what to change, such as 'the sky'")
        if (self.map_prompt is None) != (self.segmenter is None):
            raise InputError(
                "map_prompt= needs segmenter=, a CLIPSeg folder or cached Hub id (such as CIDAS/clipseg-rd64-refined)"
                if self.segmenter is None else "segmenter= is used with map_prompt=, the text that names what to change"
            )

    def _check_conditioning(self) -> None:
        from ..models.controlnets import Control
        from ..models.families import INPAINT_MASKS

        for name in ("prompt", "negative"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}={getattr(self, name)!r}: give a text (str)")
        for name in ("cfg", "cfg_2"):
            if getattr(self, name) is not None:
                check_number(name, getattr(self, name))
        if self.inpaint_mask is not None:
            check_choice("inpaint_mask", self.inpaint_mask, INPAINT_MASKS)
        if isinstance(self.controls, (str, bytes)) or not all(isinstance(control, Control) for control in self.controls):
            raise TypeError(f"controls={self.controls!r}: give a list of Control (one per ControlNet)")
        object.__setattr__(self, "controls", tuple(self.controls))

    def _check_sampler(self) -> None:
        from ..core.compat import compat_named

        try:
            sampler, implied = sampler_named(self.sampler)
        except TypeError as error:
            raise TypeError(f"sampler={self.sampler!r}: {error}") from None
        except ValueError as error:
            raise InputError(f"sampler={self.sampler!r}: {error}") from None
        for name, choices in (("release", RELEASES), ("clock", CLOCKS)):
            check_choice(name, getattr(self, name), choices)
        if self.schedule is not None:
            check_choice("schedule", self.schedule, SCHEDULES)
        if implied is not None:
            if self.schedule is not None and self.schedule != implied:
                raise InputError(f"sampler={self.sampler!r} names the {implied} schedule and schedule={self.schedule}; give one")
            object.__setattr__(self, "schedule", implied)
        object.__setattr__(self, "sampler", sampler.name)
        problem = clock_problem(sampler, self.clock)
        if problem:
            raise InputError(f"clock={self.clock}: {problem}")
        check_number("denoise", self.denoise, 0, 1, open_low=True)
        check_number("strength", self.strength, 0, 1)
        if self.compat is not None:
            check_choice("compat", self.compat, COMPAT_NAMES)
            ranged_by = None if sampler.has_schedule else f"sampler={sampler.name}"
            problem = compat_named(self.compat).problem(self.strength, self.clock, ranged_by)
            if problem:
                raise InputError(f"compat={self.compat}: {problem}")
        if self.steps is not None:
            check_number("steps", self.steps, 1, whole=True)
            ignored = ignored_steps(sampler, self.steps)
            if ignored:
                warn(ignored)
                object.__setattr__(self, "steps", None)
            elif self.steps > MANY_STEPS:
                calls = self.steps * max(sampler.calls_per_step, 1)
                warn(f"steps={self.steps} makes {calls} model calls ({self.steps // DEFAULT_STEPS}x the default "
                     f"{DEFAULT_STEPS} steps' time); results stop improving long before {MANY_STEPS}")

    def check_model(self, model: Union["Model", "ModelSource"]) -> None:
        """The settings against what ``model`` (loaded, or found by
        :func:`~kdiff_differential.models.find_model`) can do, before it loads: a flow
        model's schedule, the built-in model's missing text."""
        if model.builtin:
            given = [f"{name}={getattr(self, name)!r}" for name in ("prompt", "negative", "cfg", "cfg_2") if getattr(self, name) not in ("", None)]
            if given:
                warn(f"the built-in model takes no text or guidance: {', '.join(given)} ignored")
            if self.inpaint_mask is not None:
                raise InputError(f"inpaint_mask={self.inpaint_mask}: the built-in model has no inpainting channels")
            if self.controls:
                raise InputError("controls: ControlNets need a diffusers model (model=: a folder, Hub id or .safetensors file); the built-in model takes none")
        if model.flow and self.schedule not in (None, "model"):
            raise InputError(f"schedule={self.schedule}: this flow model's schedule starts at t = 1 (sigma = inf); use schedule=model")
        if model.flow and self.clock == "sigma" and self.denoise >= 1:
            raise InputError("clock=sigma: a flow model's schedule from t = 1 starts at sigma = inf, where log sigma has no range; "
                             "use clock=timestep or step")

    def check_clip(self, model: Union["Model", "ModelSource"]) -> None:
        """The settings against a clip's edit on ``model``: a video model, and no image-only setting."""
        if model.frames_per_latent is None:
            raise InputError(f"model={getattr(model, 'name', 'the model')} ({model.description}) edits images only; "
                             "a video needs a video model (Wan 2.1 or 2.2) or the built-in model")
        for name in ("controls", "inpaint_mask"):
            if getattr(self, name):
                raise InputError(f"{name}={getattr(self, name)!r}: for images; a video edit takes none")


def setting_names() -> tuple[str, ...]:
    """The names of every setting, as :class:`EditSettings` and the command line have them."""
    return tuple(field.name for field in fields(EditSettings))
