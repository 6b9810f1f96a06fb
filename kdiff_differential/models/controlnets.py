"""ControlNets beside the denoising network, for every sampler.

A ControlNet is loaded with the pipeline (:func:`load_controlnets`, checked against the
family's network: its class, its widths, its channels), and given an image and settings
for a run as a :class:`Control`. :func:`control_run` turns the controls into a
:class:`ControlRun`, which travels in the denoiser's ``extra_args`` as ``control=``:
the network wrapper (:mod:`.networks`) calls it with the network's own inputs at every
call (the same ``x_t``, ``t`` and conditions, the guidance batch of cond and uncond
alike, as diffusers' ControlNet pipelines do), and adds the summed residuals to the
network's call. So a ControlNet composes with every k-diffusion sampler and with the
Differential Diffusion wrapper, which sits outside the model call and is unchanged.

What differs between families (what the ControlNet takes as its image, what its outputs
are called at the network) is on the family adapter
(:class:`~kdiff_differential.models.families.Family`).

The window. ``start`` and ``end`` are fractions of the run's schedule, as diffusers'
``control_guidance_start``/``end``: of N steps, step i is controlled when
``start <= i / N`` and ``(i + 1) / N <= end``. A call belongs to the step whose levels
bracket it (``sigma_i >= sigma > sigma_{i+1}``; second-order samplers' extra calls too).
A ControlNet at scale 0, or whose window holds no step, is never called.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from .sources import HUB_ID, PICKLE_RISK, Source, from_hub, is_pickle

if TYPE_CHECKING:
    from .families import Family

CANNY = "canny:"
ControlImage = Union[str, Path, np.ndarray]


@dataclass(frozen=True)
class Control:
    """One ControlNet's input for a run.

    ``image``: a path to an image file, ``"canny:PATH"`` (the edges of that image, by
    :func:`canny_edges`), or uint8 (H, W, 3); any size, resized to the run's as
    diffusers' image processor does. ``scale``: the ControlNet's conditioning scale (0:
    not called). ``start``, ``end``: the window, fractions of the schedule with
    0 <= start < end <= 1 (see the module docstring). ``mode``: for a union ControlNet
    (SDXL's ControlNetUnionModel), the kind of control image, its index among the
    ControlNet's modes (e.g. xinsir's promax: 0 openpose, 1 depth, 2 scribble/HED, 3
    canny/lineart, 4 normal, 5 segmentation, 6 tile); None for the others.
    """

    image: ControlImage
    scale: float = 1.0
    start: float = 0.0
    end: float = 1.0
    mode: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("scale", "start", "end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InputError(f"control_{name}={value!r}: must be a finite number, got {value!r}")
        if not 0 <= self.start < self.end <= 1:
            raise InputError(
                f"control_start={self.start:g}, control_end={self.end:g}: the window must satisfy 0 <= start < end <= 1 "
                "(fractions of the schedule)"
            )
        if self.mode is not None and (isinstance(self.mode, bool) or not isinstance(self.mode, int) or self.mode < 0):
            raise InputError(f"control_mode={self.mode!r}: must be a whole number >= 0, got {self.mode!r}")
        if not isinstance(self.image, (str, Path, np.ndarray)):
            raise TypeError(f"a Control's image must be a path, 'canny:PATH' or a uint8 array (H, W, 3), got {type(self.image).__name__}")

    def pixels(self) -> np.ndarray:
        """The control image as uint8 (H, W, 3): read, or the edges of one read
        (``canny:PATH``), or as given. InputError for a missing or unreadable file."""
        from ..files.images import read_image

        if isinstance(self.image, np.ndarray):
            if self.image.dtype != np.uint8 or self.image.ndim != 3 or self.image.shape[2] != 3:
                raise ValueError(f"a Control's image must be uint8 (H, W, 3), got {self.image.dtype} {self.image.shape}")
            return self.image
        text = str(self.image)
        if text.startswith(CANNY):
            return canny_edges(read_image(_control_path(text[len(CANNY):]), "control_image"))
        return read_image(_control_path(text), "control_image")


def _control_path(path: str) -> str:
    if not Path(path).is_file():
        raise InputError(f"control_image={path}: no such file; give an image file or canny:PATH")
    return path


def canny_edges(image: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """The Canny edges of ``image`` (uint8 (H, W, 3)) as a white-on-black uint8 (H, W, 3)
    image, the input canny ControlNets were trained on: scikit-image's Canny on the
    luminance, Gaussian ``sigma`` and its default hysteresis thresholds."""
    from skimage.color import rgb2gray
    from skimage.feature import canny

    edges = canny(rgb2gray(image), sigma=sigma)
    return np.repeat((edges * 255).astype(np.uint8)[..., None], 3, axis=2)


def load_controlnets(
    sources: Sequence[Union[str, Path]], family: "Family", latent_channels: int, device: torch.device,
    dtype: torch.dtype, allow_pickle: bool = False,
) -> list[nn.Module]:
    """The ControlNets at ``sources`` (folders or Hub ids ``org/name[@revision]``), each
    checked to fit ``family``'s loaded network, in ``dtype`` on ``device``. InputError
    (one line) for a folder that is not a ControlNet, a ControlNet for another family,
    or one whose widths or channels do not fit."""
    if isinstance(sources, (str, Path)) or not isinstance(sources, Sequence):
        raise TypeError(f"controlnets must be a sequence of folders or Hub ids, got {sources!r}")
    return [_load(str(source), family, latent_channels, dtype, allow_pickle).to(device).eval().requires_grad_(False) for source in sources]


def _load(given: str, family: "Family", latent_channels: int, dtype: torch.dtype, allow_pickle: bool) -> nn.Module:
    import diffusers

    folder = _folder(given, allow_pickle)
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        raise InputError(f"controlnet={given}: not a ControlNet folder (no readable config.json)") from None
    name = config.get("_class_name")
    if not family.controlnets:
        raise InputError(f"controlnet={given}: ControlNets are not supported for {family.name} models")
    if name not in family.controlnets:
        from .families import FAMILIES

        others = [other.name for other in FAMILIES if name in other.controlnets]
        what = f"a ControlNet for {' and '.join(others)}" if others else "not a ControlNet"
        raise InputError(f"controlnet={given}: a {name} ({what}); this {family.name} model takes {', '.join(family.controlnets)}")
    family.check_controlnet(config, latent_channels, given)
    files = list(folder.glob("*"))
    if not allow_pickle and any(is_pickle(f) for f in files) and not any(f.suffix == ".safetensors" for f in files):
        raise InputError(f"controlnet={given}: its weights are in a pickle file only; refused, {PICKLE_RISK}")
    cls = getattr(diffusers, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return cls.from_pretrained(folder, torch_dtype=dtype, local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"controlnet={given}: cannot load it ({reason[:300]})") from None


def _folder(given: str, allow_pickle: bool) -> Path:
    if Path(given).is_dir():
        return Path(given)
    match = HUB_ID.match(given)
    if match is None or Path(given).suffix:
        raise InputError(f"controlnet={given}: no such folder, and not a Hub id (org/name[@revision])")
    from huggingface_hub import snapshot_download

    source = Source(given, "hub", repo=match["repo"], revision=match["revision"], allow_pickle=allow_pickle, flag="controlnet")
    patterns = ["config.json", "*.safetensors"] + (["*.bin"] if allow_pickle else [])
    return Path(from_hub(source, lambda **local: snapshot_download(source.hub_repo, revision=source.revision, allow_patterns=patterns, **local)))


def _image_input(condition: Tensor, mode: Optional[int], net: nn.Module) -> Callable[[int], dict[str, Any]]:
    """A ControlNet's own inputs at batch n: its condition (batch 1) repeated."""
    return lambda n: {"controlnet_cond": condition.expand(n, *condition.shape[1:])}


def _union_input(condition: Tensor, mode: Optional[int], net: Any) -> Callable[[int], dict[str, Any]]:
    """A union ControlNet's (SDXL's ControlNetUnionModel): the condition as the one image
    it is given, the mode as its index and as a one-hot over the modes (diffusers' inputs)."""
    kinds = torch.zeros(1, net.config.num_control_type, device=condition.device, dtype=condition.dtype)
    kinds[0, mode] = 1
    return lambda n: {"controlnet_cond": [condition.expand(n, *condition.shape[1:])], "control_type": kinds.expand(n, -1), "control_type_idx": [mode]}


def _flux_input(condition: Tensor, mode: Optional[int], net: nn.Module) -> Callable[[int], dict[str, Any]]:
    """Flux's ControlNet: the condition, and a union one's mode as an index per image."""
    index = None if mode is None else torch.tensor([[mode]], dtype=torch.long, device=condition.device)
    return lambda n: {"controlnet_cond": condition.expand(n, *condition.shape[1:]), "controlnet_mode": None if index is None else index.expand(n, 1)}


# How a ControlNet class takes its condition and its mode; by default, the image alone.
INPUTS = {"ControlNetUnionModel": _union_input, "FluxControlNetModel": _flux_input}
# The config entry that counts a union ControlNet's modes, by class (an absent or null
# entry: not a union ControlNet, it takes no mode).
MODES = {"ControlNetUnionModel": "num_control_type", "FluxControlNetModel": "num_mode"}


@dataclass(frozen=True)
class _Active:
    """One ControlNet in a run: its module, its inputs at batch n (``inputs(n)``: the
    condition in the module's dtype, with its mode), its scale, and its window as the
    network's timesteps: called when ``low < t <= high``."""

    net: nn.Module
    inputs: Callable[[int], dict[str, Any]]
    scale: float
    high: float
    low: float

    def covers(self, t: Tensor) -> bool:
        if self.high == math.inf and self.low == -math.inf:
            return True  # the whole schedule: no need to read t (a device sync)
        value = float(t.flatten()[0])
        return self.low < value <= self.high


class ControlRun:
    """The ControlNets of one run, as the network wrapper calls them: :meth:`at` the
    call's timesteps, then :meth:`residuals`. Built by :func:`control_run`; passed as
    ``control=`` in ``extra_args``."""

    def __init__(self, family: "Family", active: Sequence[_Active]) -> None:
        self.family, self.active = family, list(active)

    def at(self, t: Tensor) -> Optional["ControlRun"]:
        """The ControlNets whose window holds timestep ``t`` (N,) (the network's, in the
        sampler's dtype); None when none does, so that nothing is called."""
        active = [entry for entry in self.active if entry.covers(t)]
        return ControlRun(self.family, active) if active else None

    def residuals(self, n: int, **inputs: Any) -> dict[str, Any]:
        """The network's extra keyword arguments: the residuals of every ControlNet here,
        summed in order, under the names the family's network takes them by. ``inputs``
        are the network's own keyword inputs (batch ``n``), which each ControlNet is
        called with too (as the family adapts them to it)."""
        total = None
        for entry in self.active:
            own = self.family.control_inputs(inputs, entry.net.config)
            out = entry.net(**own, **entry.inputs(n), conditioning_scale=entry.scale, return_dict=False)
            total = out if total is None else _add(total, out)
        assert total is not None, "residuals of no ControlNet"  # only a run with active ControlNets calls this
        return dict(zip(self.family.control_outputs, total))


def _add(first: Any, second: Any) -> Any:
    """Residuals summed leaf by leaf: tensors, and tuples or lists of them (None stays)."""
    if isinstance(first, (tuple, list)):
        return type(first)(_add(a, b) for a, b in zip(first, second))
    return None if first is None else first + second


def control_run(
    family: "Family", nets: Sequence[nn.Module], controls: Sequence[Control], pixels: Callable[[np.ndarray, Any], Tensor],
    sigmas: Optional[Tensor], sigma_to_t: Callable[[Tensor], Tensor],
) -> Optional[ControlRun]:
    """The :class:`ControlRun` for ``controls``, one per ControlNet of ``nets`` in order;
    None when none of them is ever called (all at scale 0 or outside their windows).

    ``pixels(image, config)`` turns a control image (uint8 (H, W, 3)) into what the
    family's ControlNet of that config takes, at the run's size; ``sigmas`` is the schedule the sampler runs (needed
    only for a window other than 0..1); ``sigma_to_t`` the denoiser's clock, which gives
    the timesteps the network sees.
    """
    if isinstance(controls, Control) or not isinstance(controls, Sequence) or not all(isinstance(c, Control) for c in controls):
        raise TypeError(f"controls must be a sequence of Control, got {controls!r}")
    if len(controls) != len(nets):
        raise ValueError(f"controls: one Control per ControlNet loaded, {len(nets)}; got {len(controls)}")
    active = []
    for net, control in zip(nets, controls):
        _check_mode(net, control.mode)
        window = _window(control, sigmas, sigma_to_t)
        if control.scale == 0 or window is None:
            continue
        condition = pixels(control.pixels(), net.config).to(next(net.parameters()).dtype)
        inputs = INPUTS.get(type(net).__name__, _image_input)(condition, control.mode, net)
        active.append(_Active(net, inputs, float(control.scale), *window))
    return ControlRun(family, active) if active else None


def _check_mode(net: nn.Module, mode: Optional[int]) -> None:
    """InputError for a union ControlNet without a mode it has, or a mode for one that has none."""
    name = type(net).__name__
    count = getattr(net.config, MODES.get(name, ""), None)
    if count is None and mode is not None:
        raise InputError(f"control_mode={mode}: this ControlNet ({name}) has no modes; give control_mode= to union ControlNets only")
    if count is not None and (mode is None or mode >= count):
        raise InputError(f"control_mode=: this union ControlNet ({name}) needs the mode of its image, a whole number in 0..{count - 1}; got {mode}")


def _window(control: Control, sigmas: Optional[Tensor], sigma_to_t: Callable[[Tensor], Tensor]) -> Optional[tuple[float, float]]:
    """(high, low): the timesteps bounding ``control``'s window over ``sigmas``, the
    whole range when it spans the schedule; None when it holds no step."""
    if control.start == 0 and control.end == 1:
        return math.inf, -math.inf
    if sigmas is None:
        raise ValueError("a control window other than 0..1 needs sigmas= (the schedule the sampler runs)")
    n = len(sigmas) - 1
    steps = [i for i in range(n) if not (i / n < control.start or (i + 1) / n > control.end)]
    if not steps:
        return None
    first, last = steps[0], steps[-1]

    def timestep(i: int) -> float:
        return float(sigma_to_t(sigmas[i : i + 1])[0])

    high = math.inf if first == 0 else timestep(first)
    low = -math.inf if last + 1 >= n or float(sigmas[last + 1]) <= 0 else timestep(last + 1)
    return high, low
