"""Models to wrap: the built-in closed-form denoiser and, with the ``diffusers`` extra,
diffusers models of the families in :data:`.families.FAMILIES` (Stable Diffusion
1.x/2.x, SDXL, their inpainting checkpoints, the SDXL refiner, SD3/SD3.5, Flux.1), from a
folder, a Hub id or a single checkpoint file, with LoRAs and ControlNets. Each, fitted to one input
image, is an :class:`ImageModel`. Importing this package imports neither torch nor
diffusers (so that ``--help`` can list the families): they load when used.
"""

from __future__ import annotations

from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol, Sequence, Union

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor, nn

    from .controlnets import Control
    from .diffusers_model import DiffusersPipeline
    from .families import Family
    from .sources import Source

Loras = Sequence[tuple[Union[str, Path], float]]
# The keywords a diffusers model loads with (load_pipeline's), which find_model takes.
LOAD_OPTIONS = ("config", "loras", "allow_pickle", "dtype", "offload", "vae_tiling", "controlnets")


class ImageModel(Protocol):
    """A model fitted to one input image: what :func:`~kdiff_differential.edit_image` runs.

    ``latent`` is the image in the model's space (1, C, h, w); ``denoiser`` a k-diffusion
    denoiser for such latents; ``extra_args`` what it takes at every call, with the same
    keywords on every model (``cfg`` None: the model's default; ``cfg_2`` a second expert's
    scale, Wan 2.2 A14B's; an inpainting model reads
    ``change_map``, 1 = change; ControlNets take ``controls`` and ``sigmas``; a model that
    has no use for a setting refuses it when given); ``decode`` brings a result latent back
    to a uint8 image (H, W, 3) of the input's size. ``schedule``, ``steps`` and ``cfg``
    are the model's defaults (``cfg`` None: it takes no guidance) and ``description`` what
    was detected, for the user ('' when there is nothing to say).
    """

    latent: "Tensor"
    denoiser: "nn.Module"
    schedule: str
    steps: int
    cfg: Optional[float]
    description: str

    def extra_args(
        self, prompt: str = "", negative: str = "", cfg: Optional[float] = None, change_map: Any = None,
        inpaint_mask: Optional[str] = None, controls: Sequence["Control"] = (), sigmas: Optional["Tensor"] = None,
        cfg_2: Optional[float] = None,
    ) -> dict[str, Any]: ...

    def decode(self, latent: "Tensor") -> "np.ndarray": ...


class Model(Protocol):
    """A loaded model, fitted to each input image by :meth:`fit`: the built-in model
    (:class:`~kdiff_differential.models.builtin.Builtin`) or a diffusers one
    (:class:`~kdiff_differential.models.diffusers_model.DiffusersPipeline`).

    ``schedule``, ``steps``, ``cfg`` and ``description`` as on :class:`ImageModel`;
    ``native_side`` the side in pixels it was trained at (None: any size, the built-in
    model); ``flow`` whether it is a flow model, whose schedule starts at t = 1;
    ``frames_per_latent`` for a model that edits video, how many frames one latent frame
    merges (Wan: 4, and its :meth:`fit` takes T = 4k + 1 frames; the built-in model: 1),
    None for an image model; ``builtin`` whether it is the built-in model. A video model's :meth:`fit` takes a clip's frames too, uint8
    (T, H, W, 3), into a latent (1, C, F, h, w), and its ``decode`` gives frames back.
    """

    schedule: str
    steps: int
    cfg: Optional[float]
    description: str
    native_side: Optional[int]
    flow: bool
    frames_per_latent: Optional[int]
    builtin: bool

    def fit(self, image: "np.ndarray") -> ImageModel: ...


@dataclass(frozen=True)
class ModelSource:
    """A model as given, resolved once without loading it: ``name`` ('builtin', a folder,
    a Hub id or a single file), its diffusers ``source`` and ``family`` (None for the
    built-in model) and the keyword ``options`` it loads with (:func:`load_pipeline`'s).
    Enough to check settings before a load that can take minutes; it pickles, so that a
    worker process can open it itself."""

    name: str
    source: Optional["Source"] = None
    family: Optional[type["Family"]] = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.family is None

    @property
    def flow(self) -> bool:
        return self.schedule == "model"

    @property
    def native_side(self) -> Optional[int]:
        return None if self.family is None else self.family.native_size

    @property
    def frames_per_latent(self) -> Optional[int]:
        """As on :class:`Model`: the built-in model's 1, a video family's (Wan: 4), None for an image family."""
        return 1 if self.family is None else self.family.video_frames

    @property
    def description(self) -> str:
        return "the built-in model" if self.family is None else f"a {self.family.name} model"

    @property
    def schedule(self) -> str:
        """The family's default schedule (a few-step UNet folder's own is known once loaded)."""
        return "karras" if self.family is None else self.family.default_schedule

    def load(self, device: Union[str, "torch.device", None] = None) -> Model:
        """The model, loaded on ``device`` (default: the CPU) with its ``options``."""
        device = resolve_device(device or "cpu")
        if self.source is None:
            from .builtin import Builtin

            return Builtin(device)
        from .diffusers_model import quiet_loading

        quiet_loading()
        return load_pipeline(self.source, device, **self.options)


def resolve_device(device: Union[str, "torch.device", None]) -> "torch.device":
    """``device``, or CUDA when there is one and the CPU otherwise (None or ``"auto"``);
    InputError for a device that is not there."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"device={device!r}: give 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device={device}: no CUDA device is available here; use device=cpu (or auto)")
    return device


def find_model(name: Union[str, Path, ModelSource], **options: Any) -> ModelSource:
    """What model ``name`` is, without loading it: 'builtin', or a diffusers folder, Hub
    id or single file, its family read from ``model_index.json`` or the file's tensor
    names, with :func:`load_pipeline`'s keyword ``options`` (:data:`LOAD_OPTIONS`; LoRAs
    as (file, scale) pairs), checked. A :class:`ModelSource` comes back as it is.
    InputError for bad input, for options the built-in model has no use for, or for
    diffusers missing."""
    if isinstance(name, ModelSource):
        if options:
            raise InputError(f"{', '.join(f'{key}=' for key in options)}: this model is found already, with its options")
        return name
    unknown = set(options) - set(LOAD_OPTIONS)
    if unknown:
        raise TypeError(f"{', '.join(sorted(unknown))}: not a loading option; give some of {', '.join(LOAD_OPTIONS)}")
    if name == "builtin":
        given = [key for key, value in options.items() if value not in (None, False, (), [])]
        if given:
            raise InputError(f"{', '.join(f'{key}=' for key in given)}: for a diffusers model (model=: a folder, Hub id or "
                             ".safetensors file); the built-in model takes none")
        return ModelSource("builtin")
    from .diffusers_model import require_diffusers
    from .loras import check_loras
    from .sources import resolve_source

    require_diffusers()
    allow_pickle = bool(options.get("allow_pickle", False))
    if options.get("loras"):
        options["loras"] = check_loras(options["loras"], allow_pickle)
    source = resolve_source(name, options.get("config"), allow_pickle)
    return ModelSource(str(name), source, source.family(), options)


def load_pipeline(
    path: Union[str, Path, "Source"], device: Union[str, "torch.device"] = "cpu", *,
    config: Optional[Union[str, Path]] = None, loras: Loras = (), allow_pickle: bool = False,
    dtype: Optional[Union[str, "torch.dtype"]] = None, offload: bool = False, vae_tiling: bool = False,
    controlnets: Sequence[Union[str, Path]] = (),
) -> "DiffusersPipeline":
    """A diffusers model as a
    :class:`~kdiff_differential.models.diffusers_model.DiffusersPipeline`:
    ``denoiser_for(latent)``, ``encode``, ``decode``, ``extra_args``, the default
    ``schedule`` and the detected ``family``.

    ``path`` is a diffusers folder; a Hub id ``org/name[@revision]`` (from
    huggingface_hub's cache, which is all that is used with ``HF_HUB_OFFLINE=1``, else
    downloaded into it); or a single ``.safetensors`` checkpoint, whose family is read
    from its tensor names and whose configuration comes from ``config`` (a diffusers
    folder or Hub id; default: diffusers' own for that family, through the cache).
    ``loras`` are (file, scale) pairs, fused in at their scales (diffusers/peft or kohya
    layout). Pickle files (``.ckpt``, ``.pt``, ``.bin``) run code when loaded: refused
    unless ``allow_pickle``.

    Memory: ``dtype`` ('fp16', 'bf16' or 'fp32') sets the weights' (default: the family's
    on CUDA, fp32 on the CPU; a VAE whose config says ``force_upcast`` stays fp32);
    ``offload`` keeps each part on the CPU until it runs (diffusers' model CPU offload);
    ``vae_tiling`` encodes and decodes in overlapping tiles (diffusers' VAE tiling: large
    images in less memory, seams blended). ``controlnets`` are ControlNet folders or Hub
    ids, checked to fit the model; a run's images and settings for them go to
    ``extra_args(controls=[...])`` (:class:`~kdiff_differential.models.controlnets.Control`).
    Bad input, or diffusers not installed, is an InputError.
    """
    from .diffusers_model import DiffusersPipeline, require_diffusers

    require_diffusers()
    return DiffusersPipeline(
        path, device, config=config, loras=loras, allow_pickle=allow_pickle, dtype=dtype, offload=offload, vae_tiling=vae_tiling,
        controlnets=controlnets,
    )


def default_schedule(name: str, **options: Any) -> str:
    """The noise schedule model ``name``'s family runs by default: 'karras', or 'model'
    for a flow model (:attr:`ModelSource.schedule`)."""
    return find_model(name, **options).schedule


# The last diffusers pipeline open_model(keep=True) loaded, by its source, device and options.
_KEPT: dict[str, Any] = {}


def open_model(name: Union[str, Path, ModelSource], device: Union[str, "torch.device", None] = None, *, keep: bool = False,
               **options: Any) -> Model:
    """Model ``name`` ('builtin', a diffusers model as :func:`load_pipeline` takes it, or a
    :class:`ModelSource`) loaded on ``device`` (default: the CPU) with the keyword
    ``options`` of :func:`find_model`, ready to :meth:`~Model.fit` to image after image.
    ``keep``: keep the loaded diffusers pipeline, one at a time, for the next call with the
    same source, device and options. Bad input is an InputError that says why."""
    device = resolve_device(device or "cpu")
    found = find_model(name, **options)
    if found.source is None or not keep:
        return found.load(device)
    key = repr((found.name, str(device), sorted(found.options.items())))
    if key not in _KEPT:
        _KEPT.clear()  # one at a time: the previous pipeline's memory goes before the next loads
        _KEPT[key] = found.load(device)
    return _KEPT[key]


def load_model(name: str, image: "np.ndarray", device: Union[str, "torch.device", None] = None, *, keep: bool = False,
               **options: Any) -> ImageModel:
    """:func:`open_model` fitted to ``image``, uint8 (H, W, 3)."""
    return open_model(name, device, keep=keep, **options).fit(image)


__all__ = [
    "ImageModel", "LOAD_OPTIONS", "Model", "ModelSource", "default_schedule", "find_model", "load_model", "load_pipeline",
    "open_model", "resolve_device",
]
