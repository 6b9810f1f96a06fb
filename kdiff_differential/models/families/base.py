"""What every model family shares: the :class:`Family` interface (described in the
package's docstring), :class:`FlowFamily` for the flow-matching transformers, and the
small helpers the adapters share (packing 2x2 patches into tokens, batching conditions,
reading tensor names, Qwen3's chat template)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional

from ...errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    Conditions = tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]


# A diffusers model (a VAE, UNet or transformer): each class has its own config and call,
# so the adapters read it duck-typed.
Network = Any
# The prefix original (CompVis/SGM) checkpoints put before the denoising network's tensors.
UNET_PREFIX = "model.diffusion_model."
# An inpainting network's mask: the map binarised for the whole run, or the pixels released by
# each call; the default is the one that keeps a gradient map better (samplers/PERFORMANCE.md).
INPAINT_MASKS = ("fixed", "released")
INPAINT_MASK = "fixed"
# The steps few-step checkpoints (SDXL Lightning/Hyper/Turbo, Flux.1 schnell) are published for.
FEW_STEPS = 4


def batched(tensor: "Tensor", n: int) -> "Tensor":
    return tensor.expand(n, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def pack_patches(latent: "Tensor") -> "Tensor":
    """(N, C, H, W) -> (N, H/2 * W/2, 4C): one token per 2x2 patch, as Flux was trained."""
    n, channels, height, width = latent.shape
    tokens = latent.reshape(n, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(n, (height // 2) * (width // 2), channels * 4)


def unpack_patches(v: "Tensor", x_t: "Tensor") -> "Tensor":
    """Tokens (N, H/2 * W/2, 4C) back to x_t's (N, C, H, W)."""
    n, channels, height, width = x_t.shape
    v = v.reshape(n, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return v.reshape(n, channels, height, width)


def control_latent(image: "Tensor", vae: "Network", shifted: bool) -> "Tensor":
    """A control image (1, 3, H, W) in [0, 1] as the VAE's latent: its mode, minus the
    config's ``shift_factor`` where ``shifted``, times its ``scaling_factor``; float32."""
    import torch

    with torch.no_grad():
        latent = vae.encode((image * 2 - 1).to(vae.dtype)).latent_dist.mode().float()
    return (latent - ((vae.config.get("shift_factor") or 0) if shifted else 0)) * vae.config.scaling_factor


def channel_statistics(vae: "Network", like: "Tensor") -> tuple["Tensor", "Tensor"]:
    """A 3D VAE's per-channel latent statistics, its config's (``latents_mean``,
    ``latents_std``), each (1, C, 1, 1, 1) in ``like``'s dtype and device."""
    import torch

    return tuple(torch.tensor(vae.config[key], dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1) for key in ("latents_mean", "latents_std"))  # type: ignore[return-value]


def has_tensors(keys: Collection[str], *fragments: str) -> bool:
    """Whether some tensor name starts with one of ``fragments``, with or without the
    network prefix (transformer-only files are saved both ways)."""
    return any(key.startswith(fragment) or key.startswith(UNET_PREFIX + fragment) for key in keys for fragment in fragments)


def _plain(value: Any) -> Any:
    """A config value as JSON reads it (tuples as lists), for comparing two configs."""
    return list(value) if isinstance(value, (tuple, list)) else value


def chat_tokens(family: Family, text: str, thinking: bool) -> tuple["Tensor", "Tensor"]:
    """A prompt as the Qwen3 pipelines tokenise it: the user's message in the tokenizer's
    chat template, followed by the assistant's turn (``thinking``: Qwen3's thinking mode
    on, as Z-Image; off, an empty thinking block, as FLUX.2), padded to the family's
    ``text_length`` (at most the tokenizer's): (ids, attention mask), each (1, length)."""
    words = family.text["tokenizer"]
    chat = words.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    length = min(family.text_length, words.model_max_length)
    ids = words(chat, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return ids.input_ids.to(family.device), ids.attention_mask.to(family.device)


class Family(ABC):
    """A model family's adapter: what its folder holds, how it encodes text and runs its
    network. A family writes :meth:`kind`, :meth:`denoiser`, :meth:`prediction` and
    :meth:`encode_text` (or :meth:`embed`), and overrides what else differs; its class
    attributes say what it is (docs/models.md, "The family interface")."""

    name: str = ""
    pipelines: tuple[str, ...] = ()
    native_size: int = 512
    network: str = "unet"
    encoders: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)
    optional: tuple[str, ...] = ()
    default_schedule: str = "karras"
    default_steps: int = 20
    default_cfg: float = 7.0
    cuda_dtype: str = "float16"
    patch: int = 1
    guided: bool = True
    # The diffusers community Differential Diffusion pipeline whose rule compat="diffusers"
    # follows (a key of compat.DIFFUSERS_PIPELINES): SDXL's for the UNets; a family without
    # a pipeline of its own takes its kind's.
    diffusers_pipeline: str = "sdxl"
    # ControlNets: the diffusers classes that fit the network, the config keys they
    # must share with it, and the network's keyword names for their outputs, in order.
    controlnets: tuple[str, ...] = ()
    control_fit: tuple[str, ...] = ()
    control_outputs: tuple[str, ...] = ()
    reference: bool = False
    config_repo: str = ""
    experts: int = 1  # the denoising networks it switches between (Wan 2.2 A14B: 2, each with its own cfg)
    text_length: int = 512  # the tokens a prompt is padded to, for the families that pad to a length
    # A video family's frames per latent frame, as its published VAEs have it (the loaded VAE's
    # config has the last word: frames_per_latent(vae)); None: an image family.
    video_frames: Optional[int] = None

    def __init__(
        self, source: str, index: dict[str, Any], config: Any, text: dict[str, Any], device: "torch.device",
        scheduler: Optional[dict[str, Any]] = None,
    ) -> None:
        self.source, self.index, self.config, self.text, self.device = source, index, config, text, device
        self.scheduler = scheduler or {}

    @abstractmethod
    def kind(self, latent: int) -> str:
        """ "text-to-image" or "inpainting" (or what the family makes), from the network's
        input channels and the VAE's ``latent`` channels; InputError for a network the VAE
        does not fit."""

    @abstractmethod
    def denoiser(self, network: "Network", scheduler: dict[str, Any], latent_size: tuple[int, ...]) -> "nn.Module":
        """The network as a k-diffusion denoiser ``(x, sigma, cond=...) -> x0`` for latents of ``latent_size`` (h, w)."""

    @staticmethod
    @abstractmethod
    def prediction(scheduler: dict[str, Any]) -> str:
        """What the network predicts, for the user ("epsilon prediction", "flow matching")."""

    @abstractmethod
    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        """One text's conditions, a dict of tensors with batch 1."""

    def defaults(self) -> tuple[str, int, float]:
        """(schedule, steps, cfg) this checkpoint runs by default: the family's."""
        return self.default_schedule, self.default_steps, self.default_cfg

    @classmethod
    def owns(cls, index: dict[str, Any]) -> bool:
        """Whether a ``model_index.json`` (as a dict) describes a pipeline of this family."""
        return index.get("_class_name") in cls.pipelines

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        """Whether a single checkpoint file with these tensor names is of this family."""
        return False

    @classmethod
    def whole(cls, keys: Collection[str]) -> bool:
        """Whether a single file of this family holds the whole pipeline (network, VAE,
        text encoders) rather than the denoising network alone."""
        return any(key.startswith(("first_stage_model.", "vae.")) for key in keys)

    @classmethod
    def left_out(cls, index: dict[str, Any], name: str) -> bool:
        """Whether a folder leaves out the optional part ``name`` (model_index.json names no class for it)."""
        return name in cls.optional and not (index.get(name) or [None])[0]

    @classmethod
    def parts(cls, index: dict[str, Any]) -> list[str]:
        """The folders a pipeline of this family is loaded from, those left out excepted."""
        needed = [cls.network, "vae", "scheduler", *(name for pair in cls.encoders for name in pair)]
        return [name for name in needed if not cls.left_out(index, name)]

    @classmethod
    def denoising(cls, parts: dict[str, Any]) -> "nn.Module":
        """The network the denoiser runs, from the loaded ``parts``: the folder ``network``."""
        return parts[cls.network]

    @classmethod
    def frames_per_latent(cls, vae: "Network") -> Optional[int]:
        """Video frames per latent frame for a video family (its VAE's temporal factor); None: images."""
        return cls.video_frames

    @staticmethod
    def latent_factor(vae: "Network") -> int:
        """Pixels per latent pixel on each side: the VAE's downsampling."""
        return 2 ** (len(vae.config.block_out_channels) - 1)

    @staticmethod
    def latent_channels(vae: "Network") -> int:
        """The channels of the latent the sampler runs on: the VAE's."""
        return vae.config.latent_channels

    @staticmethod
    def vae_encode(vae: "Network", pixels: "Tensor") -> "Tensor":
        """Pixels (1, 3, H, W) in [-1, 1] -> the latent the sampler runs on (1, C, h, w),
        float32: the posterior's mode, minus the config's ``shift_factor``, times its
        ``scaling_factor`` (diffusers' pipelines sample the posterior; the mode keeps an
        edit reproducible)."""
        latent = vae.encode(pixels.to(vae.dtype)).latent_dist.mode().float()
        return (latent - (vae.config.get("shift_factor") or 0)) * vae.config.scaling_factor

    @staticmethod
    def vae_decode(vae: "Network", latent: "Tensor") -> "Tensor":
        """The inverse of :meth:`vae_encode`: a latent (1, C, h, w) -> pixels (1, 3, H, W), float32."""
        z = latent / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0)
        return vae.decode(z.to(vae.dtype)).sample.float()

    def tokens(self, tokenizer: str, text: str, length: Optional[int] = None) -> "Tensor":
        words = self.text[tokenizer]
        length = min(length or words.model_max_length, words.model_max_length)
        ids = words(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    def embed(self, prompt: str, negative: str, size: tuple[int, ...]) -> "Conditions":
        """(cond, uncond): the prompt and the negative prompt, each by :meth:`encode_text`
        (an unguided family's uncond: None, where it overrides this)."""
        import torch

        with torch.no_grad():
            return self.encode_text(prompt), self.encode_text(negative)

    def embed_reference(self, prompt: str, negative: str, size: tuple[int, ...], image: "Tensor", latent: "Tensor") -> "Conditions":
        """(cond, uncond) of a family that edits from a reference: :meth:`embed`'s, each
        with the reference's latent (1, C, h, w) as ``reference``. ``image`` is the
        reference itself (1, 3, H, W) in [-1, 1] at the edit's size, for a family whose
        text encoder sees it too."""
        cond, uncond = self.embed(prompt, negative, size)
        return {**cond, "reference": latent}, None if uncond is None else {**uncond, "reference": latent}

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float,
                   cfg_2: Optional[float] = None) -> dict[str, Any]:
        """What the denoiser takes at every call: classifier-free guidance at ``cfg``
        (``cfg_2``: a second expert's scale, for a family of two networks; the pipeline
        refuses it for the others)."""
        return {"cond": cond, "uncond": uncond, "cfg_scale": cfg}

    def control_channels(self, latent: int) -> int:
        """The channels a ControlNet's latent input has: the VAE's."""
        return latent

    def check_controlnet(self, config: dict[str, Any], latent: int, given: str) -> None:
        """InputError when a ControlNet's ``config`` does not fit the network: another
        width, text width or added conditioning than the network's, or other channels."""
        channels = config.get("in_channels")
        if channels != self.control_channels(latent):
            raise InputError(f"controlnet={given}: it takes {channels} latent channels, this {self.name} model has {self.control_channels(latent)} (a ControlNet for another family?)")
        for key in self.control_fit:
            theirs, ours = _plain(config.get(key)), _plain(self.config.get(key))
            if theirs != ours:
                raise InputError(f"controlnet={given}: its {key} is {theirs}, this {self.name} network's {ours} (a ControlNet for another family?)")

    def control_condition(self, image: "Tensor", config: Any, vae: "Network") -> "Tensor":
        """What a ControlNet (of ``config``) takes for the control ``image`` (1, 3, H, W)
        in [0, 1] at the run's size: the image itself (the UNet families); the flow
        families' take its latent (``vae``)."""
        return image

    @staticmethod
    def control_inputs(inputs: dict[str, Any], config: Any) -> dict[str, Any]:
        """The network's keyword ``inputs`` as a ControlNet of ``config`` takes them: as they are."""
        return inputs

    @staticmethod
    def inpainting_input(mask: "Tensor", masked: "Tensor") -> "Tensor":
        """An inpainting network's extra channels (1, C', h, w) from the pixel mask
        (1, 1, H, W), 1 = inpaint, and the masked image's latent (1, C, h, w): the UNets'
        layout, the mask at latent size (bilinear, rounded) then the latent."""
        import torch
        import torch.nn.functional as F

        small = F.interpolate(mask, size=masked.shape[-2:], mode="bilinear", align_corners=False).round()
        return torch.cat([small, masked], dim=1)


class FlowFamily(Family):
    """A flow-matching transformer: the denoiser is :class:`FlowDenoiser` around the
    family's ``velocity(transformer, x_t, t, cond) -> v`` call (see :mod:`.networks`), on
    the model's own shifted schedule from t = 1. ``pack`` is the side of the patches the
    adapter packs into tokens itself (the transformer's ``in_channels`` is the latent's
    times pack²); ``shift_options(latent_size)`` says how the schedule's shift reads the
    latent (its token count; ``one_over_n``: the pipeline's own sigmas, see FlowDenoiser)."""

    network: str = "transformer"
    default_schedule: str = "model"
    patch: int = 2
    pack: int = 1
    cuda_dtype: str = "bfloat16"
    diffusers_pipeline: str = "flux"
    # Whether the pipeline's unshifted times are linspace(1, 1/n, n) (see FlowDenoiser); None: where the shift is mu.
    one_over_n: Optional[bool] = None
    # Whether the velocity call takes t in the sampler's dtype rather than the network's (TransformerVelocity's exact_time).
    exact_time: bool = False
    makes: str = "text-to-image"  # what kind() says of a network that takes the VAE's latent

    @staticmethod
    @abstractmethod
    def velocity(transformer: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        """The transformer's velocity at ``x_t`` (N, C, h, w) and flow time ``t`` (N,), with the
        conditions ``cond`` and a ControlNet's outputs ``control``."""

    def kind(self, latent: int) -> str:
        channels, expected = self.config.in_channels, latent * self.pack**2
        if channels != expected:
            raise InputError(
                f"model={self.source}: the transformer takes {channels} channels and the VAE gives {latent}; "
                f"supported: {expected} ({self.makes})"
            )
        return self.makes

    def denoiser(self, network: "Network", scheduler: dict[str, Any], latent_size: tuple[int, ...]) -> "nn.Module":
        from ..flow import FlowDenoiser
        from ..networks import TransformerVelocity

        velocity = TransformerVelocity(network, self.velocity, exact_time=self.exact_time)
        model = FlowDenoiser.from_scheduler_config(velocity, scheduler, **self.shift_options(latent_size))
        model.diffusers_pipeline = self.diffusers_pipeline
        return model

    def shift_options(self, latent_size: tuple[int, ...]) -> dict[str, Any]:
        """How the schedule's shift reads a latent of ``latent_size`` (h, w) (see
        ``FlowDenoiser.from_scheduler_config``): the token count of its 2x2 patches."""
        return {"image_seq_len": (latent_size[0] // 2) * (latent_size[1] // 2), "one_over_n": self.one_over_n}

    @staticmethod
    def prediction(scheduler: dict[str, Any]) -> str:
        return "flow matching"

    def control_channels(self, latent: int) -> int:
        """The channels a ControlNet's latent input has: the packed latent's."""
        return latent * self.pack**2
