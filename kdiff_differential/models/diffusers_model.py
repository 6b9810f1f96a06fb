"""Any supported diffusers model, run through k-diffusion: ONE code path.

"Load, encode, denoise, decode" lives here once, with the loading helpers (the parts of
a folder, or of a single file with its configuration; :mod:`.sources` says where a
model comes from, :mod:`.loras` applies LoRAs); what differs between model
families (text encoders, the conditioning the network takes, how it becomes a
k-diffusion denoiser) lives in a small :class:`~kdiff_differential.models.families.Family`
adapter, picked from ``model_index.json`` or a single file's tensor names (the
registry, :data:`~kdiff_differential.models.families.FAMILIES`, says which are
supported; inpainting checkpoints: see :meth:`DiffusersPipeline.extra_args`). Needs the ``diffusers`` extra; diffusers and
transformers are imported inside the functions, after :func:`require_diffusers`.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core.denoiser import RELEASE_MASK
from ..errors import InputError
from ..pixels import to_image, to_tensor
from .controlnets import Control, ControlRun, control_run, load_controlnets
from .families import INPAINT_MASK, INPAINT_MASKS, Family
from .loras import apply_loras, check_loras
from .sources import PICKLE_RISK, Source, is_pickle, read_checkpoint, resolve_source

# Run in the repository's folder: the package is installed from a clone, not the package index.
INSTALL = "pip install -e '.[diffusers]'"

# Libraries a model_index.json may name classes from; nothing else is imported.
LIBRARIES = ("diffusers", "transformers")


def load_part(source: str, component: str, load: Callable[[], Any]) -> Any:
    """Run ``load``; a missing or broken file becomes one InputError line."""
    try:
        return load()
    except (OSError, ValueError, KeyError, AttributeError, ImportError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"model={source}: cannot load {component} ({reason})") from None


def read_config(root: Path, component: str, name: str = "config.json") -> dict[str, Any]:
    """``component/name`` as a dict; InputError when it is missing or not JSON."""
    return json.loads(load_part(str(root), f"{component}/", lambda: (root / component / name).read_text()))


def component_class(root: Path, index: dict[str, Any], name: str) -> Any:
    """The class ``model_index.json`` names for the part ``name`` (a diffusers or
    transformers class only: nothing else is imported)."""
    entry = index.get(name) or [None, None]
    library, class_name = entry if len(entry) == 2 else (None, None)
    if library not in LIBRARIES or not isinstance(class_name, str):
        raise InputError(f"model={root}: model_index.json names {entry!r} for {name}; expected a diffusers or transformers class")
    cls = getattr(importlib.import_module(library), class_name, None)
    if cls is None:
        raise InputError(f"model={root}: {library} has no {class_name} (for {name}/); a newer {library} may")
    return cls


def load_component(root: Path, index: dict[str, Any], name: str, dtype: torch.dtype, allow_pickle: bool = False) -> Any:
    """The component in folder ``name``, built from the class ``model_index.json`` names
    for it; torch modules in ``dtype``. Weights only in pickle files (``.bin``) are
    refused unless ``allow_pickle``."""
    cls = component_class(root, index, name)
    options: dict[str, Any] = {"subfolder": name, "local_files_only": True}
    if isinstance(cls, type) and issubclass(cls, nn.Module):
        options["torch_dtype"] = dtype
        files = list((root / name).glob("*")) if (root / name).is_dir() else []
        if not allow_pickle and any(is_pickle(f) for f in files) and not any(f.suffix == ".safetensors" for f in files):
            raise InputError(f"model={root}: {name}/ has its weights in a pickle file only; refused, {PICKLE_RISK}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # loading advice (unused weights, legacy configs) is not the user's concern
        return load_part(str(root), f"{name}/", lambda: cls.from_pretrained(root, **options))


def load_parts(source: Source, family: type[Family], dtype: torch.dtype) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """The parts of ``source`` by folder name (the network, ``vae``, ``scheduler``, the
    tokenizers and text encoders), with the folder that holds its configuration and
    that folder's ``model_index.json``. A single file holding the whole pipeline is
    loaded by diffusers' ``from_single_file``; one holding the network alone (SD3 and
    Flux files often do) gives the network, and the configuration folder the rest."""
    if source.kind != "file":
        index = source.index()
        root = source.folder()
        missing = [name for name in family.parts(index) if not (root / name).is_dir()]
        if missing:
            raise InputError(f"model={source.given}: a {family.name} folder without {', '.join(missing)}/")
        parts = {name: load_component(root, index, name, _part_dtype(root, name, dtype), source.allow_pickle) for name in family.parts(index)}
        return root, index, parts
    import diffusers

    whole = family.whole(source.keys())
    root, index = _configuration(source, family, whole)
    file = str(source.local)
    if whole:
        pipeline = getattr(diffusers, family.pipelines[0])
        loaded = _from_single_file(source, pipeline, file, config=str(root), local_files_only=True, torch_dtype=dtype)
        parts = {name: part for name, part in loaded.components.items() if part is not None}
        if read_config(root, "vae").get("force_upcast", False):
            parts["vae"] = parts["vae"].float()
        return root, index, parts
    parts = {name: load_component(root, index, name, _part_dtype(root, name, dtype), source.allow_pickle) for name in family.parts(index) if name != family.network}
    network = component_class(root, index, family.network)
    parts[family.network] = _from_single_file(source, network, file, config=str(root), subfolder=family.network, local_files_only=True, torch_dtype=dtype)
    return root, index, parts


DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def weights_dtype(dtype: Optional[Union[str, torch.dtype]], family: type[Family], device: torch.device) -> torch.dtype:
    """The weights' dtype: ``dtype`` ('fp16', 'bf16', 'fp32' or that torch dtype), or by
    default the family's on CUDA (fp16; bf16 for flow transformers) and fp32 elsewhere."""
    if dtype is None:
        return getattr(torch, family.cuda_dtype) if device.type == "cuda" else torch.float32
    names = {getattr(torch, name): name for name in DTYPES.values()}
    if isinstance(dtype, str) and dtype in DTYPES:
        return getattr(torch, DTYPES[dtype])
    if isinstance(dtype, torch.dtype) and dtype in names:
        return dtype
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)} (or torch.float16, bfloat16, float32), got {dtype!r}")


def _pipeline(cls: Any, parts: dict[str, Any]) -> Any:
    """A diffusers pipeline of class ``cls`` holding ``parts`` (the same module objects),
    for what diffusers does on a pipeline (LoRAs, CPU offload); the parts it needs and
    ``parts`` lacks are None."""
    expected, optional = cls._get_signature_keys(cls)
    settings = {"requires_safety_checker": False} if "requires_safety_checker" in optional else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return cls(**{name: parts.get(name) for name in expected}, **settings)


def _part_dtype(root: Path, name: str, dtype: torch.dtype) -> torch.dtype:
    """fp32 for a VAE whose config asks for it (``force_upcast``: SDXL's overflows in fp16)."""
    return torch.float32 if name == "vae" and read_config(root, "vae").get("force_upcast", False) else dtype


def _configuration(source: Source, family: type[Family], whole: bool) -> tuple[Path, dict[str, Any]]:
    """The local folder with a single file's configuration (``--config``, or the family's
    ``config_repo``, else diffusers' default for its family, from the Hub cache), and its ``model_index.json``; for a
    network-only file, with the other parts' weights."""
    settings = source.config
    if settings is None:
        from diffusers.loaders.single_file_utils import fetch_diffusers_config

        repo = family.config_repo or fetch_diffusers_config(read_checkpoint(source))["pretrained_model_name_or_path"]
        settings = Source(repo, "hub", repo=repo, allow_pickle=source.allow_pickle)
    try:
        index = settings.index()
        weights = [] if whole else [f"{name}/*.safetensors" for name in family.parts(index) if name != family.network]
        root = settings.folder(weights)
    except InputError:
        if source.config is not None:
            raise
        from huggingface_hub import constants

        where = "is not in the Hub cache and HF_HUB_OFFLINE=1" if constants.HF_HUB_OFFLINE else "cannot be fetched"
        raise InputError(
            f"model={source.given}: no configuration for this {family.name} checkpoint: the default, {settings.repo}, "
            f"{where}; give config= a diffusers folder or Hub id of the same model"
        ) from None
    if not family.owns(index):
        raise InputError(f"config={settings.given}: not a {family.name} pipeline, which model={source.given} is")
    return root, index


def _from_single_file(source: Source, cls: Any, file: str, **options: Any) -> Any:
    """diffusers' ``cls.from_single_file(file, **options)``; its failures (many kinds:
    conversion, a part missing from both the file and the configuration) as one line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return cls.from_single_file(file, **options)
        except Exception as error:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise InputError(f"model={source.given}: cannot load the checkpoint ({reason})") from None


def require_diffusers() -> None:
    """InputError naming the extra to install when diffusers or transformers is missing."""
    try:
        import diffusers  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as error:
        raise InputError(f"a diffusers model needs diffusers and transformers ({error}); install them: {INSTALL}") from None


def quiet_loading() -> None:
    """Silence diffusers' and transformers' loading bars, config advice and logged errors
    (which we raise as InputError), as they would bury a command line's own output.
    They are global settings: for programs, not libraries."""
    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity(logging.CRITICAL)
        library.utils.logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module="diffusers")


def change_mask(change_map: Any, size: tuple[int, ...], device: torch.device, threshold: float = 0.5) -> Tensor:
    """The change map binarised (1 = change) at ``size``: (1, 1, *size) float32, 1 where
    it is >= 0.5 (``threshold`` 0: where it is > 0). The map is resized bilinearly first,
    then binarised, as ComfyUI's InpaintModelConditioning."""
    from ..maps.reading import as_strength, strength_tensor

    strength = as_strength(strength_tensor(change_map), torch.float32).to(device)
    while strength.dim() < 4:
        strength = strength.unsqueeze(0)
    strength = F.interpolate(strength[:1, :1], size=size, mode="bilinear", align_corners=False)
    return (strength > 0).float() if threshold == 0 else (strength >= threshold).float()


class DiffusersPipeline:
    """A diffusers model, from a folder, a Hub id or a single file, as what a
    k-diffusion user needs.

    ``family`` is the detected :class:`~kdiff_differential.models.families.Family`
    adapter, ``inpainting`` whether the UNet takes the inpainting channels, ``schedule``,
    ``steps`` and ``cfg`` what this checkpoint runs by default (the family's
    ``defaults()``: ``karras``, 20, 7; SD3/Flux: ``model``, their own from t = 1; a
    few-step folder: ``model``, the scheduler's own timesteps, 4 steps). :meth:`denoiser_for` gives the network (with classifier-free guidance where
    the family uses it) as a k-diffusion denoiser for a latent, called as
    ``denoiser(x, sigma, **extra_args(...))``; ``denoiser`` is the one for the native
    size (only Flux's schedule depends on the size). :meth:`encode` and :meth:`decode`
    are the latent codec (the family's; by default ``(z - shift_factor) * scaling_factor``
    of the VAE's config, float32). Weights are fp16 on CUDA (bf16 for flow transformers) and fp32 on CPU;
    the VAE stays fp32 where its config asks (``force_upcast``); latents and the sampler
    stay fp32. ``source``, ``config``, ``loras``, ``allow_pickle``, ``dtype``,
    ``offload``, ``vae_tiling`` and ``controlnets`` are as in
    :func:`~kdiff_differential.models.load_pipeline`; the loaded ControlNets are
    ``self.controlnets``, in order. A video family (Wan) has ``frames_per_latent`` (its
    VAE's temporal factor; None for an image family): :meth:`fit`, :meth:`encode` and
    :meth:`decode` take frames and video latents (1, C, F, h, w) too; ``denoising`` is
    the network the denoiser runs (Wan 2.2 A14B: both experts).
    """

    def __init__(
        self, path: Union[str, Path, Source], device: Union[str, torch.device] = "cpu", *,
        config: Optional[Union[str, Path]] = None, loras: Sequence[tuple[Union[str, Path], float]] = (), allow_pickle: bool = False,
        dtype: Optional[Union[str, torch.dtype]] = None, offload: bool = False, vae_tiling: bool = False,
        controlnets: Sequence[Union[str, Path]] = (),
    ) -> None:
        require_diffusers()
        self.device = _device(device)
        source = path if isinstance(path, Source) else resolve_source(path, config, allow_pickle)
        checked = check_loras(loras, allow_pickle)
        kind = source.family()
        weights = weights_dtype(dtype, kind, self.device)
        root, index, parts = load_parts(source, kind, weights)
        self.offload = bool(offload)
        for name, part in parts.items():
            if isinstance(part, nn.Module):
                # Offloaded parts stay on the CPU; diffusers' hooks bring each to the device when it runs.
                part.to("cpu" if self.offload else self.device).eval().requires_grad_(False)
        if checked or self.offload:
            import diffusers

            pipeline = _pipeline(getattr(diffusers, kind.pipelines[0]), parts)
            if checked:
                apply_loras(pipeline, kind.name, checked)
            if self.offload:
                pipeline.enable_model_cpu_offload(device=self.device)
        self.vae, self.network = parts["vae"], parts[kind.network]
        self.denoising = kind.denoising(parts)
        if vae_tiling:
            self.vae.enable_tiling()
        text = {name: parts.get(name) for pair in kind.encoders for name in pair}
        self.scheduler = read_config(root, "scheduler", "scheduler_config.json")
        self.family = kind(source.given, index, self.network.config, text, self.device, self.scheduler)
        self.factor = self.family.latent_factor(self.vae)
        self.frames_per_latent: Optional[int] = self.family.frames_per_latent(self.vae)
        channels = self.family.latent_channels(self.vae)
        kind_of_model = self.family.kind(channels)
        self.inpainting = kind_of_model == "inpainting"
        # ControlNets stay on the device, offload or not: they run at every call, beside the network.
        self.controlnets = load_controlnets(controlnets, self.family, channels, self.device, weights, allow_pickle)
        self.schedule, self.steps, cfg = self.family.defaults()
        self.cfg: Optional[float] = cfg  # None: no guidance, which no diffusers family is
        self._denoisers: dict[tuple[int, int], nn.Module] = {}
        native = self.family.native_size // self.factor
        self.denoiser = self.denoiser_for((native, native))
        self.description = f"{kind.name}, {kind_of_model}, {kind.prediction(self.scheduler)}"
        self.native_side: Optional[int] = self.family.native_size
        self.flow = kind.default_schedule == "model"
        self.builtin = False

    def fit(self, image: np.ndarray) -> "FittedModel":
        """The model fitted to ``image``, uint8 (H, W, 3), or for a video family to
        frames, uint8 (T, H, W, 3) with T = 1 + ``frames_per_latent`` * k: its latent and denoiser."""
        return FittedModel(self, image)

    def denoiser_for(self, latent: Union[Tensor, tuple[int, int]]) -> nn.Module:
        """The k-diffusion denoiser for ``latent`` (1, C, h, w), a video family's
        (1, C, F, h, w), or its size (h, w)."""
        from ..core.guidance import CFGDenoiser

        size = _latent_size(latent, self.family.patch, video=self.frames_per_latent is not None)
        if size not in self._denoisers:
            inner = self.family.denoiser(self.denoising, self.scheduler, size)
            self._denoisers[size] = (CFGDenoiser(inner) if self.family.guided else inner).to(self.device)
            if self.offload:
                self.denoising.to("cpu")  # the wrapper's tables on the device; the network waits for its hook
        return self._denoisers[size]

    def size(self, height: int, width: int) -> tuple[int, int]:
        """The nearest size (h, w) in pixels whose latent the network takes (the VAE's
        factor times the transformer's patch divides it)."""
        step = self.factor * self.family.patch
        return tuple(max(step, round(side / step) * step) for side in (height, width))  # type: ignore[return-value]

    def encode(self, image: Union[np.ndarray, Tensor]) -> Tensor:
        """uint8 (H, W, 3) or pixels (1, 3, H, W) in [-1, 1] -> the latent the sampler
        runs on (1, C, h/f, w/f), float32 (the family's codec, ``Family.vae_encode``); the
        image is resized to :meth:`size` first. A video family also takes frames, uint8
        (T, H, W, 3) or pixels (1, 3, T, H, W), T = 1 + ``frames_per_latent`` * k, and
        gives (1, C, F, h/f, w/f), F = 1 + k (an image: one frame, F = 1); its VAE
        encodes them a latent frame's worth at a time (causally, as diffusers' does)."""
        pixels = self._checked(image)
        pixels = _resized(pixels, self.size(*pixels.shape[-2:]))
        with torch.no_grad():
            return self.family.vae_encode(self.vae, pixels.clamp(-1, 1))

    def _checked(self, image: Union[np.ndarray, Tensor]) -> Tensor:
        """``image`` as pixels on the device: frames only for a video family, in a count it takes."""
        pixels = _pixels(image).to(self.device)
        if pixels.ndim == 5:
            step = self.frames_per_latent
            frames = pixels.shape[2]
            if step is None:
                raise ValueError(f"frames of shape {tuple(image.shape)} given to {self.family.name}, an image model: give one image (H, W, 3)")
            if (frames - 1) % step:
                raise ValueError(
                    f"frames: {frames} given; {self.family.name} takes 1 + {step}k frames (1, {1 + step}, {1 + 2 * step}, ...): "
                    f"pad or trim them to such a count first"
                )
        return pixels

    def decode(self, latent: Tensor) -> Tensor:
        """A latent (1, C, h, w) -> pixels (1, 3, h*f, w*f) in [-1, 1], float32; a video
        family's (1, C, F, h, w) -> (1, 3, T, h*f, w*f), decoded a latent frame at a time."""
        with torch.no_grad():
            return self.family.vae_decode(self.vae, latent).clamp(-1, 1)

    def extra_args(
        self, prompt: str, negative: str = "", cfg: Optional[float] = None, *,
        image: Optional[Union[np.ndarray, Tensor]] = None, change_map: Any = None,
        size: Optional[tuple[int, ...]] = None, inpaint_mask: Optional[str] = None,
        controls: Sequence[Control] = (), sigmas: Optional[Tensor] = None, cfg_2: Optional[float] = None,
    ) -> dict[str, Any]:
        """What the denoiser takes at every call: ``cond`` (a dict of tensors, batch 1)
        and, for guided families, ``uncond`` and ``cfg_scale``. Flux.1 dev takes ``cfg``
        as its guidance input instead (one pass, ``negative`` unused; schnell ignores it).
        ``cfg`` defaults to the checkpoint's (7; Flux.1: 3.5; a few-step UNet: 1).

        ``size`` (H, W) in pixels is the output size SDXL is told (default: ``image``'s,
        else the native size). A family that edits from a reference (FLUX.1 Kontext,
        Qwen-Image-Edit) takes ``image``, at the edit's size, as it: without one, InputError. An inpainting UNet also needs ``image`` (uint8
        (H, W, 3) or (1, 3, H, W) in [-1, 1]) and ``change_map`` (1 = change): its extra
        channels are the map binarised at 0.5 at latent size and the latent of the image
        with the pixels to change set to mid-grey. ``inpaint_mask`` (default
        :data:`INPAINT_MASK`; given for a network without inpainting channels: InputError)
        says which pixels those are: ``"fixed"``, the map binarised at 0.5 for the whole
        run (ComfyUI's InpaintModelConditioning); ``"released"``, those the wrapper has
        released by each call, weighted by its blend mask (see
        :func:`~kdiff_differential.models.networks.inpainting_channels`; the result then
        holds ``release_mask``, the key by which the wrapper passes it). Either way the
        wrapper releases pixels by the full map.

        With ControlNets loaded, ``controls`` gives one
        :class:`~kdiff_differential.models.controlnets.Control` per ControlNet, in order
        (image, scale, window); the images are resized to ``size`` as diffusers' image
        processor does. A window other than 0..1 needs ``sigmas``, the schedule the
        sampler runs (``make_sigmas``). They go in as ``control``, which the network
        calls the ControlNets with; absent when none is ever called.

        ``cfg_2``: the second expert's scale, for a model of two (Wan 2.2 A14B; default ``cfg``).
        """
        for name, text in (("prompt", prompt), ("negative", negative)):
            if not isinstance(text, str):
                raise TypeError(f"{name} must be a str, got {type(text).__name__}")
        scale = _guidance("cfg", self.cfg if cfg is None else cfg)
        _guidance("cfg_2", scale if cfg_2 is None else cfg_2)
        if cfg_2 is not None and self.family.experts < 2:
            raise InputError(f"cfg_2={cfg_2}: a second expert's scale, and this {self.family.name} model has one network")
        pixels = None if image is None else self._checked(image)
        if size is None:
            size = self.size(*pixels.shape[-2:]) if pixels is not None else (self.family.native_size,) * 2
        if inpaint_mask is not None and not self.inpainting:
            raise InputError(f"inpaint_mask={inpaint_mask}: this {self.family.name} network has no inpainting channels")
        inpaint_mask = INPAINT_MASK if inpaint_mask is None else inpaint_mask
        if inpaint_mask not in INPAINT_MASKS:
            raise ValueError(f"inpaint_mask must be one of {', '.join(INPAINT_MASKS)}, got {inpaint_mask!r}")
        if self.family.reference:
            if pixels is None:
                raise InputError(f"{self.family.name} edits from a reference image: give the input image (image=)")
            pixels = _resized(pixels, self.size(*pixels.shape[-2:]))
            cond, uncond = self.family.embed_reference(prompt, negative, size, pixels, self.encode(pixels))
        else:
            cond, uncond = self.family.embed(prompt, negative, size)
        released = self.inpainting and inpaint_mask == "released"
        if self.inpainting:
            if pixels is None or change_map is None:
                raise ValueError("an inpainting model needs image= and change_map= in extra_args")
            channels = self.inpainting_channels(pixels, change_map, released)
            cond, uncond = {**cond, **channels}, None if uncond is None else {**uncond, **channels}
        args = self.family.extra_args(cond, uncond, scale, cfg_2)
        if released:
            args = {**args, RELEASE_MASK: None}
        run = self._control_run(controls, size, sigmas) if self.controlnets or controls else None
        return args if run is None else {**args, "control": run}

    def inpainting_channels(self, pixels: Tensor, change_map: Any, released: bool) -> dict[str, Tensor]:
        """The inpainting conditions for ``pixels`` (1, 3, H, W) in [-1, 1] and the map
        (1 = change), in the family's layout (``Family.inpainting_input``: the mask and the
        latent of the image with the masked pixels mid-grey, 0 in [-1, 1]): ``concat``.
        Fixed: the map binarised at 0.5. Released: every pixel the map touches (> 0)
        masked, and ``concat_kept``, nothing masked (mask 0, the image's own latent)."""
        target = self.size(*pixels.shape[-2:])
        pixels = _resized(pixels, target)
        mask = change_mask(change_map, target, self.device, threshold=0.0 if released else 0.5)
        masked = self.encode(pixels * (1 - mask))
        layout = self.family.inpainting_input
        if not released:
            return {"concat": layout(mask, masked)}
        return {"concat": layout(torch.ones_like(mask), masked), "concat_kept": layout(torch.zeros_like(mask), self.encode(pixels))}

    def _control_run(self, controls: Sequence[Control], size: tuple[int, ...], sigmas: Optional[Tensor]) -> Optional[ControlRun]:
        from diffusers.image_processor import VaeImageProcessor
        from PIL import Image

        from ..core.clocks import find_attribute

        processor = VaeImageProcessor(vae_scale_factor=self.factor, do_convert_rgb=True, do_normalize=False)

        def condition(image: np.ndarray, config: Any) -> Tensor:
            pixels = processor.preprocess(Image.fromarray(image), height=size[0], width=size[1]).to(self.device, torch.float32)
            return self.family.control_condition(pixels, config, self.vae)

        clock = find_attribute(self.denoiser, "sigma_to_t")
        return control_run(self.family, self.controlnets, controls, condition, sigmas, lambda s: clock(s.to(self.device, torch.float32)))


def _device(device: Union[str, torch.device]) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") from None


def _pixels(image: Union[np.ndarray, Tensor]) -> Tensor:
    """An image as pixels (1, 3, H, W) in [-1, 1]: from uint8 (H, W, 3), or as given;
    frames, uint8 (T, H, W, 3), as (1, 3, T, H, W), or as given."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (3, 4) or image.shape[-1] != 3 or (image.ndim == 4 and not image.shape[0]):
            raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape} (a video model also takes frames (T, H, W, 3))")
        if image.ndim == 4:
            return torch.cat([to_tensor(frame) for frame in image]).transpose(0, 1)[None]
        return to_tensor(image)
    if isinstance(image, Tensor):
        if image.ndim not in (4, 5) or image.shape[:2] != (1, 3):
            raise ValueError(f"image must be pixels (1, 3, H, W) in [-1, 1], got shape {tuple(image.shape)} (a video model's frames: (1, 3, T, H, W))")
        return image
    raise TypeError(f"image must be a uint8 numpy array (H, W, 3) or a tensor (1, 3, H, W), got {type(image).__name__}")


def _resized(pixels: Tensor, size: tuple[int, ...]) -> Tensor:
    """Pixels (1, 3, H, W), or frames (1, 3, T, H, W), at ``size`` (h, w): as they are, or
    resized bicubically (antialiased), frame by frame."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    if pixels.ndim == 5:
        frames = pixels[0].transpose(0, 1)
        return _resized(frames, size).transpose(0, 1)[None]
    return F.interpolate(pixels, size=size, mode="bicubic", align_corners=False, antialias=True)


def _latent_size(latent: Union[Tensor, tuple[int, int]], patch: int, video: bool = False) -> tuple[int, int]:
    """(h, w) of a latent (B, C, h, w), a video family's (B, C, F, h, w), or of a size;
    both multiples of the network's ``patch``."""
    if isinstance(latent, Tensor):
        if latent.ndim != (5 if video else 4):
            raise ValueError(f"latent must be {'(B, C, F, h, w)' if video else '(B, C, h, w)'}, got shape {tuple(latent.shape)}")
        size = tuple(latent.shape[-2:])
    elif isinstance(latent, (tuple, list)) and len(latent) == 2 and all(isinstance(side, int) for side in latent):
        size = tuple(latent)
    else:
        raise TypeError(f"latent must be a tensor (B, C, h, w) or a size (h, w), got {latent!r}")
    if any(side < patch or side % patch for side in size):
        raise ValueError(f"the latent's sides must be positive multiples of {patch} for this model, got {size}")
    return size  # type: ignore[return-value]


def _guidance(name: str, scale: Any) -> float:
    """A guidance scale, checked: a finite number (TypeError naming ``name`` otherwise)."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise TypeError(f"{name} must be a finite number, got {scale!r}")
    return float(scale)


class FittedModel:
    """A :class:`DiffusersPipeline` fitted to one input image: the command line's
    :class:`~kdiff_differential.models.ImageModel`.

    ``latent`` is the image's latent (1, C, H/f, W/f), ``denoiser`` the pipeline's
    denoiser for it, ``schedule`` and ``steps`` the family's defaults; ``decode`` brings a result latent
    back to a uint8 image (H, W, 3) of the input's size. A video family's: frames uint8
    (T, H, W, 3) give ``latent`` (1, C, F, H/f, W/f) and ``decode`` frames (T, H, W, 3);
    an image there is one frame (F = 1), decoded to (H, W, 3).
    """

    def __init__(self, pipeline: DiffusersPipeline, image: np.ndarray) -> None:
        self.pipeline = pipeline
        self.image = image
        self.description = pipeline.description
        self.schedule, self.steps = pipeline.schedule, pipeline.steps
        self.cfg: Optional[float] = pipeline.cfg
        self.latent = pipeline.encode(image)
        self.denoiser = pipeline.denoiser_for(self.latent)
        self.frames_per_latent = pipeline.frames_per_latent

    def extra_args(
        self, prompt: str = "", negative: str = "", cfg: Optional[float] = None, change_map: Any = None, inpaint_mask: Optional[str] = None,
        controls: Sequence[Control] = (), sigmas: Optional[Tensor] = None, cfg_2: Optional[float] = None,
    ) -> dict[str, Any]:
        return self.pipeline.extra_args(
            prompt, negative, cfg, image=self.image, change_map=change_map, inpaint_mask=inpaint_mask, controls=controls, sigmas=sigmas,
            cfg_2=cfg_2,
        )

    def decode(self, latent: Tensor) -> np.ndarray:
        pixels = self.pipeline.decode(latent)
        size = tuple(self.image.shape[-3:-1])
        pixels = _resized(pixels, size).clamp(-1, 1)
        if pixels.ndim == 4:
            return to_image(pixels)
        frames = np.stack([to_image(pixels[:, :, i]) for i in range(pixels.shape[2])])
        return frames if self.image.ndim == 4 else frames[0]
