"""Model families: what differs between diffusers pipelines, one small adapter each.

This is the one place a family is described. :data:`FAMILIES` is the registry: the
loader (:mod:`.diffusers_model`) asks it which family a source is, the messages and
``--help`` list its names. Importing this module imports neither torch nor diffusers.

A family class says:

- ``name``: shown to the user ("Stable Diffusion XL");
- :meth:`Family.owns` (a ``model_index.json``) and :meth:`Family.owns_keys` (a single
  file's tensor names): whether a model is its own; ``pipelines`` are the diffusers
  ``_class_name`` values it takes, the first being the pipeline class that loads its
  single files and LoRAs;
- ``native_size``: the pixel size it was trained at;
- ``config_repo``: the Hub id a single file's configuration comes from without
  ``--config``, for a family diffusers infers none for (empty: diffusers' inference);
- ``network``, ``encoders``: the folders of the denoising network and of the
  (tokenizer, text encoder) pairs; ``optional``: those a folder may leave out;
- defaults: ``default_schedule`` (``karras``; flow models: ``model``),
  ``default_steps``, ``default_cfg``; ``cuda_dtype``: the weights' dtype on CUDA;
- ``patch``: latent sides must be multiples of it (transformers take 2x2 patches);
- ``guided``: whether the denoiser runs classifier-free guidance (``cond``/``uncond``);
- ControlNets (:mod:`.controlnets`): ``controlnets``, the diffusers classes that fit the
  network; ``control_fit``, the config keys a ControlNet must share with the network;
  ``control_outputs``, the network's keyword names for a ControlNet's outputs.
- ``reference``: whether it edits from a reference image (the input image, whose latent
  the conditions carry as ``reference``; FLUX.1 Kontext, Qwen-Image-Edit), and
  ``embed_reference(prompt, negative, size, image, latent)``, its conditions then.

- the latent codec: ``latent_factor(vae)``, ``latent_channels(vae)``,
  ``vae_encode(vae, pixels)``, ``vae_decode(vae, latent)``: by default the VAE's
  downsampling and channels, ``(z - shift_factor) * scaling_factor`` of its config (a
  family whose VAE normalises otherwise, or whose latent the sampler sees patchified,
  overrides them).

An adapter is built complete, by the loader, from the loaded parts:
``Family(source, index, config, text, device, scheduler)`` (``config``: the network's,
``text``: the tokenizers and text encoders by folder name, ``scheduler``: the folder's
scheduler config). It then gives:

- ``defaults()``: (schedule, steps, cfg) this checkpoint runs by default: the family's,
  unless its configs say it is a few-step one (a UNet folder whose scheduler spaces
  "trailing", as SDXL Lightning, Hyper and Turbo publish; Flux.1 schnell);

- ``kind(latent_channels)``: "text-to-image" or "inpainting", from the network's input
  channels; InputError for a network the VAE does not fit;
- ``denoiser(network, scheduler, latent_size)``: the network as a k-diffusion denoiser
  (x, sigma, cond=...) -> x0 for latents of ``latent_size`` (h, w);
- ``embed(prompt, negative, size)``: the conditions (cond, uncond), each a dict of
  tensors with batch 1; uncond is None for an unguided family. ``size`` is (H, W) in pixels;
- ``extra_args(cond, uncond, cfg)``: what the denoiser takes at every call;
- ``prediction(scheduler)``: what the network predicts, for the user ("epsilon prediction",
  "flow matching").
- ``check_controlnet(config, latent, given)``: InputError for a ControlNet that does not
  fit; ``control_condition(image, config, vae)``: what a ControlNet takes for a control
  image; ``control_inputs(inputs, config)``: the network's inputs as that ControlNet takes them.

A new family is a class here and an entry in :data:`FAMILIES`. The UNet families wrap
their network as a CompVis model (:mod:`.networks`); the flow families (SD3, Flux) as a
velocity model reparametrised by :class:`~kdiff_differential.models.flow.FlowDenoiser`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional

from ..errors import InputError

if TYPE_CHECKING:
    import torch
    from torch import Tensor, nn

    Conditions = tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]

# The prefix original (CompVis/SGM) checkpoints put before the denoising network's tensors.
UNET_PREFIX = "model.diffusion_model."
# An inpainting network's mask: the map binarised for the whole run, or the pixels released by
# each call; the default is the one that keeps a gradient map better (samplers/PERFORMANCE.md).
INPAINT_MASKS = ("fixed", "released")
INPAINT_MASK = "fixed"
# The steps few-step checkpoints (SDXL Lightning/Hyper/Turbo, Flux.1 schnell) are published for.
FEW_STEPS = 4


def _batch(tensor: "Tensor", n: int) -> "Tensor":
    return tensor.expand(n, *tensor.shape[1:]) if tensor.shape[0] == 1 else tensor


def _pack(latent: "Tensor") -> "Tensor":
    """(N, C, H, W) -> (N, H/2 * W/2, 4C): one token per 2x2 patch, as Flux was trained."""
    n, channels, height, width = latent.shape
    tokens = latent.reshape(n, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(n, (height // 2) * (width // 2), channels * 4)


def _latent(image: "Tensor", vae: "nn.Module", shifted: bool) -> "Tensor":
    """A control image (1, 3, H, W) in [0, 1] as the VAE's latent: its mode, minus the
    config's ``shift_factor`` where ``shifted``, times its ``scaling_factor``; float32."""
    import torch

    with torch.no_grad():
        latent = vae.encode((image * 2 - 1).to(vae.dtype)).latent_dist.mode().float()
    return (latent - ((vae.config.get("shift_factor") or 0) if shifted else 0)) * vae.config.scaling_factor


def _has(keys: Collection[str], *fragments: str) -> bool:
    """Whether some tensor name starts with one of ``fragments``, with or without the
    network prefix (transformer-only files are saved both ways)."""
    return any(key.startswith(fragment) or key.startswith(UNET_PREFIX + fragment) for key in keys for fragment in fragments)


def _plain(value: Any) -> Any:
    """A config value as JSON reads it (tuples as lists), for comparing two configs."""
    return list(value) if isinstance(value, (tuple, list)) else value


def _refiner(index: dict[str, Any]) -> bool:
    """Whether an SDXL ``model_index.json`` is the refiner's: the second encoder without the first."""
    return "text_encoder_2" in index and not (index.get("text_encoder") or [None])[-1]


class Family:
    """What all families share: the parts a folder needs, tokenising, and
    classifier-free guidance as the extra arguments."""

    name = ""
    pipelines: tuple[str, ...] = ()
    native_size = 512
    network = "unet"
    encoders: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"),)
    optional: tuple[str, ...] = ()
    default_schedule = "karras"
    default_steps = 20
    default_cfg = 7.0
    cuda_dtype = "float16"
    patch = 1
    guided = True
    # ControlNets: the diffusers classes that fit the network, the config keys they
    # must share with it, and the network's keyword names for their outputs, in order.
    controlnets: tuple[str, ...] = ()
    control_fit: tuple[str, ...] = ()
    control_outputs: tuple[str, ...] = ()
    reference = False
    config_repo = ""

    def __init__(
        self, source: str, index: dict[str, Any], config: Any, text: dict[str, Any], device: "torch.device",
        scheduler: Optional[dict[str, Any]] = None,
    ) -> None:
        self.source, self.index, self.config, self.text, self.device = source, index, config, text, device
        self.scheduler = scheduler or {}

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

    @staticmethod
    def latent_factor(vae: "nn.Module") -> int:
        """Pixels per latent pixel on each side: the VAE's downsampling."""
        return 2 ** (len(vae.config.block_out_channels) - 1)

    @staticmethod
    def latent_channels(vae: "nn.Module") -> int:
        """The channels of the latent the sampler runs on: the VAE's."""
        return vae.config.latent_channels

    @staticmethod
    def vae_encode(vae: "nn.Module", pixels: "Tensor") -> "Tensor":
        """Pixels (1, 3, H, W) in [-1, 1] -> the latent the sampler runs on (1, C, h, w),
        float32: the posterior's mode, minus the config's ``shift_factor``, times its
        ``scaling_factor`` (diffusers' pipelines sample the posterior; the mode keeps an
        edit reproducible)."""
        latent = vae.encode(pixels.to(vae.dtype)).latent_dist.mode().float()
        return (latent - (vae.config.get("shift_factor") or 0)) * vae.config.scaling_factor

    @staticmethod
    def vae_decode(vae: "nn.Module", latent: "Tensor") -> "Tensor":
        """The inverse of :meth:`vae_encode`: a latent (1, C, h, w) -> pixels (1, 3, H, W), float32."""
        z = latent / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0)
        return vae.decode(z.to(vae.dtype)).sample.float()

    def tokens(self, tokenizer: str, text: str, length: Optional[int] = None) -> "Tensor":
        words = self.text[tokenizer]
        length = min(length or words.model_max_length, words.model_max_length)
        ids = words(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        return ids.input_ids.to(self.device)

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> "Conditions":
        """(cond, uncond): the prompt and the negative prompt, each by the family's
        ``_encode(text) -> dict of tensors`` (families that encode otherwise override this)."""
        import torch

        with torch.no_grad():
            return self._encode(prompt), self._encode(negative)

    def embed_reference(self, prompt: str, negative: str, size: tuple[int, int], image: "Tensor", latent: "Tensor") -> "Conditions":
        """(cond, uncond) of a family that edits from a reference: :meth:`embed`'s, each
        with the reference's latent (1, C, h, w) as ``reference``. ``image`` is the
        reference itself (1, 3, H, W) in [-1, 1] at the edit's size, for a family whose
        text encoder sees it too."""
        cond, uncond = self.embed(prompt, negative, size)
        return {**cond, "reference": latent}, None if uncond is None else {**uncond, "reference": latent}

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float) -> dict[str, Any]:
        return {"cond": cond, "uncond": uncond, "cfg_scale": cfg}

    def control_channels(self, latent: int) -> int:
        """The channels a ControlNet's latent input has: the VAE's."""
        return latent

    def check_controlnet(self, config: dict[str, Any], latent: int, given: str) -> None:
        """InputError when a ControlNet's ``config`` does not fit the network: another
        width, text width or added conditioning than the network's, or other channels."""
        channels = config.get("in_channels")
        if channels != self.control_channels(latent):
            raise InputError(f"--controlnet {given}: it takes {channels} latent channels, this {self.name} model has {self.control_channels(latent)} (a ControlNet for another family?)")
        for key in self.control_fit:
            theirs, ours = _plain(config.get(key)), _plain(self.config.get(key))
            if theirs != ours:
                raise InputError(f"--controlnet {given}: its {key} is {theirs}, this {self.name} network's {ours} (a ControlNet for another family?)")

    def control_condition(self, image: "Tensor", config: Any, vae: "nn.Module") -> "Tensor":
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


class StableDiffusion(Family):
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, its last hidden state as
    ``crossattn``; a UNet with the CompVis interface, epsilon or v prediction."""

    name = "Stable Diffusion 1.x/2.x"
    pipelines = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionKDiffusionPipeline")
    controlnets = ("ControlNetModel",)
    # Its residuals join the UNet's blocks: the same widths, text width and added conditioning.
    control_fit = ("block_out_channels", "cross_attention_dim", "addition_embed_type")
    control_outputs = ("down_block_additional_residuals", "mid_block_additional_residual")

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        # SDXL's UNets embed the pooled text and time ids (label_emb); SD 1.x/2.x's do not.
        return _has(keys, "input_blocks.") and not _has(keys, "label_emb.")

    def defaults(self) -> tuple[str, int, float]:
        """A folder whose scheduler spaces its timesteps "trailing" is a few-step
        checkpoint (SDXL Lightning, Hyper, Turbo): its own schedule, 4 steps, no guidance
        (cfg 1, the prompt's prediction alone, as their pipelines' guidance_scale 0)."""
        if self.scheduler.get("timestep_spacing") == "trailing":
            return "model", FEW_STEPS, 1.0
        return super().defaults()

    def kind(self, latent: int) -> str:
        channels = self.config.in_channels
        if channels not in (latent, 2 * latent + 1):
            raise InputError(
                f"--model {self.source}: the UNet takes {channels} channels and the VAE gives {latent}; "
                f"supported: {latent} (text-to-image) or {2 * latent + 1} (inpainting)"
            )
        return "inpainting" if channels == 2 * latent + 1 else "text-to-image"

    def denoiser(self, network: "nn.Module", scheduler: dict[str, Any], latent_size: tuple[int, int]) -> "nn.Module":
        from .networks import compvis_denoiser

        return compvis_denoiser(network, scheduler)

    @staticmethod
    def prediction(scheduler: dict[str, Any]) -> str:
        return f"{scheduler.get('prediction_type', 'epsilon')} prediction"

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> "Conditions":
        import torch

        with torch.no_grad():
            return tuple({"crossattn": self.text["text_encoder"](self.tokens("tokenizer", t))[0].float()} for t in (prompt, negative))  # type: ignore[return-value]


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP encoders, their penultimate hidden states concatenated as
    ``crossattn``, the second's pooled projection as ``text_embeds``, and ``time_ids`` =
    (original H, W, crop top, left = 0, 0, target H, W). With ``force_zeros_for_empty_prompt``
    an empty negative prompt is all zeros, as diffusers does it."""

    name = "Stable Diffusion XL"
    pipelines = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusionXLKDiffusionPipeline")
    native_size = 1024
    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    controlnets = ("ControlNetModel", "ControlNetUnionModel")

    @classmethod
    def owns(cls, index: dict[str, Any]) -> bool:
        return super().owns(index) and not _refiner(index)

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        # A UNet alone is read as the base's: the refiner is told apart by its text encoder.
        return _has(keys, "label_emb.") and not StableDiffusionXLRefiner.owns_keys(keys)

    def _encode(self, text: str) -> dict[str, "Tensor"]:
        import torch

        hidden = []
        for tokenizer, encoder in self.encoders:
            out = self.text[encoder](self.tokens(tokenizer, text), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        # The pooled embedding is the second (last) encoder's projection.
        return {"crossattn": torch.cat(hidden, dim=-1).float(), "text_embeds": out.text_embeds.float()}

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> "Conditions":
        import torch

        with torch.no_grad():
            cond = self._encode(prompt)
            zeros = self.index.get("force_zeros_for_empty_prompt", True) and not negative
            uncond = {k: torch.zeros_like(v) for k, v in cond.items()} if zeros else self._encode(negative)
        return {**cond, "time_ids": self.time_ids(size, True)}, {**uncond, "time_ids": self.time_ids(size, False)}

    def time_ids(self, size: tuple[int, int], positive: bool) -> "Tensor":
        """(1, 6): the original size, the crop's top-left corner (0, 0), the target size."""
        import torch

        return torch.tensor([[*size, 0, 0, *size]], dtype=torch.float32, device=self.device)


class StableDiffusionXLRefiner(StableDiffusionXL):
    """The SDXL refiner: the second CLIP encoder alone, and ``time_ids`` = (original H, W,
    crop 0, 0, aesthetic score), the score 6 for the prompt and 2.5 for the negative (as
    diffusers' StableDiffusionXLImg2ImgPipeline). Its folder has no ``text_encoder``."""

    name = "Stable Diffusion XL refiner"
    pipelines = ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLPipeline")
    encoders = (("tokenizer_2", "text_encoder_2"),)
    aesthetic_scores = (6.0, 2.5)
    controlnets = ()  # diffusers has no ControlNet pipeline for the refiner

    @classmethod
    def owns(cls, index: dict[str, Any]) -> bool:
        return index.get("_class_name") in cls.pipelines and _refiner(index)

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        embedders = {key.split(".")[2] for key in keys if key.startswith("conditioner.embedders.")}
        return _has(keys, "label_emb.") and embedders == {"0"} and any(key.startswith("conditioner.embedders.0.model.") for key in keys)

    def time_ids(self, size: tuple[int, int], positive: bool) -> "Tensor":
        import torch

        score = self.aesthetic_scores[0 if positive else 1]
        return torch.tensor([[*size, 0, 0, score]], dtype=torch.float32, device=self.device)


class FlowFamily(Family):
    """A flow-matching transformer: the denoiser is :class:`FlowDenoiser` around the
    family's ``velocity(transformer, x_t, t, cond) -> v`` call (see :mod:`.networks`), on
    the model's own shifted schedule from t = 1. ``pack`` is the side of the patches the
    adapter packs into tokens itself (the transformer's ``in_channels`` is the latent's
    times pack²); ``shift_options(latent_size)`` says how the schedule's shift reads the
    latent (its token count; ``one_over_n``: the pipeline's own sigmas, see FlowDenoiser)."""

    network = "transformer"
    default_schedule = "model"
    patch = 2
    pack = 1
    cuda_dtype = "bfloat16"
    # Whether the pipeline's unshifted times are linspace(1, 1/n, n) (see FlowDenoiser); None: where the shift is mu.
    one_over_n: Optional[bool] = None

    def kind(self, latent: int) -> str:
        channels, expected = self.config.in_channels, latent * self.pack**2
        if channels != expected:
            raise InputError(
                f"--model {self.source}: the transformer takes {channels} channels and the VAE gives {latent}; "
                f"supported: {expected} (text-to-image)"
            )
        return "text-to-image"

    def denoiser(self, network: "nn.Module", scheduler: dict[str, Any], latent_size: tuple[int, int]) -> "nn.Module":
        from .flow import FlowDenoiser
        from .networks import TransformerVelocity

        return FlowDenoiser.from_scheduler_config(TransformerVelocity(network, self.velocity), scheduler, **self.shift_options(latent_size))

    def shift_options(self, latent_size: tuple[int, int]) -> dict[str, Any]:
        """How the schedule's shift reads a latent of ``latent_size`` (h, w) (see
        ``FlowDenoiser.from_scheduler_config``): the token count of its 2x2 patches."""
        return {"image_seq_len": (latent_size[0] // 2) * (latent_size[1] // 2), "one_over_n": self.one_over_n}

    @staticmethod
    def prediction(scheduler: dict[str, Any]) -> str:
        return "flow matching"

    def control_channels(self, latent: int) -> int:
        """The channels a ControlNet's latent input has: the packed latent's."""
        return latent * self.pack**2


class StableDiffusion3(FlowFamily):
    """SD3/SD3.5: two CLIP models with projection (penultimate hidden states side by
    side, zero-padded to T5's width, then T5's tokens after them; the pooled projections
    concatenated) and classifier-free guidance with a negative prompt. A folder without
    T5 gets zeros for its tokens, as in diffusers."""

    name = "Stable Diffusion 3/3.5"
    pipelines = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    native_size = 1024
    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))
    optional = ("tokenizer_3", "text_encoder_3")
    t5_length = 256
    controlnets = ("SD3ControlNetModel",)
    control_fit = ("patch_size", "attention_head_dim", "num_attention_heads", "pooled_projection_dim")
    control_outputs = ("block_controlnet_hidden_states",)

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return _has(keys, "joint_blocks.0.")

    def _encode(self, text: str) -> dict[str, "Tensor"]:
        import torch
        import torch.nn.functional as F

        clips, pooled = [], []
        for tokenizer, encoder in self.encoders[:2]:
            out = self.text[encoder](self.tokens(tokenizer, text), output_hidden_states=True)
            clips.append(out.hidden_states[-2])
            pooled.append(out[0])
        clip = torch.cat(clips, dim=-1)
        width = self.config.joint_attention_dim
        if self.text["text_encoder_3"] is not None:
            t5 = self.text["text_encoder_3"](self.tokens("tokenizer_3", text, self.t5_length))[0]
        else:
            t5 = clip.new_zeros(1, self.t5_length, width)
        clip = F.pad(clip, (0, width - clip.shape[-1]))
        return {"text": torch.cat([clip, t5.to(clip.dtype)], dim=-2).float(), "pooled": torch.cat(pooled, dim=-1).float()}

    @staticmethod
    def velocity(transformer: "nn.Module", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        n = x_t.shape[0]
        inputs = {"hidden_states": x_t, "timestep": t * 1000, "encoder_hidden_states": _batch(cond["text"], n), "pooled_projections": _batch(cond["pooled"], n)}
        residuals = {} if control is None else control.residuals(n, **inputs)
        return transformer(**inputs, **residuals).sample

    def control_condition(self, image: "Tensor", config: Any, vae: "nn.Module") -> "Tensor":
        """The control image's latent (its mode), scaled; shifted unless the ControlNet
        zeroes its pooled projection (InstantX's, trained without the shift), as diffusers."""
        return _latent(image, vae, shifted=not config.get("force_zeros_for_pooled_projection", True))

    @staticmethod
    def control_inputs(inputs: dict[str, Any], config: Any) -> dict[str, Any]:
        """Zero pooled projections for a ControlNet that zeroes them (InstantX's); no text
        for one without a joint attention width (SD3.5's official ones), as diffusers."""
        import torch

        own = dict(inputs)
        if config.get("force_zeros_for_pooled_projection", True):
            own["pooled_projections"] = torch.zeros_like(inputs["pooled_projections"])
        if config.get("joint_attention_dim") is None:
            own["encoder_hidden_states"] = None
        return own


class Flux(FlowFamily):
    """Flux.1: CLIP's pooled output and T5's tokens. Guidance-distilled (dev): the
    guidance scale is an input of the transformer, one pass, no negative prompt;
    schnell has no guidance input. The latent goes in packed 2x2 into tokens with
    position ids, inside the call only: samplers and change maps see (N, C, H, W)."""

    name = "Flux.1"
    pipelines = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    native_size = 1024
    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    guided = False
    # The distilled guidance input is trained around 3.5 (diffusers' FluxPipeline default).
    default_cfg = 3.5
    pack = 2
    # Its pipelines pass their own times, linspace(1, 1/n, n), whatever the shift (schnell's is fixed).
    one_over_n = True
    t5_length = 512
    controlnets = ("FluxControlNetModel",)
    control_fit = ("attention_head_dim", "num_attention_heads", "joint_attention_dim", "pooled_projection_dim")
    control_outputs = ("controlnet_block_samples", "controlnet_single_block_samples")

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return _has(keys, "double_blocks.0.") and not _has(keys, "distilled_guidance_layer.")

    def defaults(self) -> tuple[str, int, float]:
        """schnell (no guidance input) is distilled to 4 steps."""
        if not self.config.get("guidance_embeds", False):
            return self.default_schedule, FEW_STEPS, self.default_cfg
        return super().defaults()

    def embed(self, prompt: str, negative: str, size: tuple[int, int]) -> "Conditions":
        import torch

        with torch.no_grad():
            pooled = self.text["text_encoder"](self.tokens("tokenizer", prompt)).pooler_output
            t5 = self.text["text_encoder_2"](self.tokens("tokenizer_2", prompt, self.t5_length))[0]
        return {"text": t5.float(), "pooled": pooled.float()}, None

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float) -> dict[str, Any]:
        import torch

        if self.config.get("guidance_embeds", False):
            cond = {**cond, "guidance": torch.tensor([float(cfg)], device=self.device)}
        return {"cond": cond}

    @staticmethod
    def velocity(transformer: "nn.Module", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        tokens, image_ids = _tokens(x_t, cond)
        outputs = tokens.shape[1]
        if "reference" in cond:  # Kontext: the reference's tokens after the latent's, ids (1, row, col)
            reference, reference_ids = _tokens(_batch(cond["reference"], n), {})
            tokens, image_ids = torch.cat([tokens, reference], dim=1), torch.cat([image_ids, reference_ids + reference_ids.new_tensor([1, 0, 0])])
        guidance = cond.get("guidance")
        inputs = {
            "hidden_states": tokens, "timestep": t, "guidance": None if guidance is None else guidance.expand(n),
            "pooled_projections": _batch(cond["pooled"], n), "encoder_hidden_states": _batch(cond["text"], n),
            "txt_ids": x_t.new_zeros(cond["text"].shape[1], 3), "img_ids": image_ids,
        }
        residuals = {} if control is None else control.residuals(n, **inputs)
        return _unpack(transformer(**inputs, **residuals).sample[:, :outputs], x_t)

    def check_controlnet(self, config: dict[str, Any], latent: int, given: str) -> None:
        super().check_controlnet(config, latent, given)
        if config.get("conditioning_embedding_channels") is not None:
            raise InputError(f"--controlnet {given}: an XLabs-style Flux ControlNet (it embeds the image itself); supported: InstantX-style ones, which take its latent")

    def control_condition(self, image: "Tensor", config: Any, vae: "nn.Module") -> "Tensor":
        """The control image's latent (its mode; diffusers draws a sample), shifted,
        scaled and packed into tokens as the latent is."""
        return _pack(_latent(image, vae, shifted=True))

    @staticmethod
    def control_inputs(inputs: dict[str, Any], config: Any) -> dict[str, Any]:
        """The guidance input only for a ControlNet that embeds it, as diffusers."""
        return inputs if config.get("guidance_embeds", False) else {**inputs, "guidance": None}


def _tokens(x_t: "Tensor", cond: dict[str, "Tensor"]) -> tuple["Tensor", "Tensor"]:
    """Flux's tokens of x_t (:func:`_pack`) and their position ids (H/2 * W/2, 3). An
    inpainting input's channels (``cond["concat"]``) go beside the latent's in each token
    (packing the concatenation is concatenating the packings, as FluxFillPipeline does)."""
    import torch

    n, _, height, width = x_t.shape
    x_in = x_t if "concat" not in cond else torch.cat([x_t, _batch(cond["concat"], n)], dim=1)
    # Built on x_t's device: a host-made table would be copied over at every call.
    rows, cols = torch.meshgrid(torch.arange(height // 2, device=x_t.device), torch.arange(width // 2, device=x_t.device), indexing="ij")
    return _pack(x_in), torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(x_t)


def _unpack(v: "Tensor", x_t: "Tensor") -> "Tensor":
    """Tokens (N, H/2 * W/2, 4C) back to x_t's (N, C, H, W)."""
    n, channels, height, width = x_t.shape
    v = v.reshape(n, height // 2, width // 2, channels, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return v.reshape(n, channels, height, width)


class FluxKontext(Flux):
    """FLUX.1 Kontext: Flux.1 dev editing from a reference image, whose latent's tokens
    go after the output latent's (position ids (1, row, col) against the output's
    (0, row, col)); only the output tokens are the prediction, so the change map
    applies to them alone. The reference is the input image at the edit's size."""

    name = "FLUX.1 Kontext"
    pipelines = ("FluxKontextPipeline", "FluxKontextInpaintPipeline")
    reference = True
    controlnets = ()  # diffusers has no ControlNet pipeline for it

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return False  # its tensors are named as Flux.1's: single Kontext files are not told apart; its folder loads


class Chroma(Flux):
    """Chroma: Flux.1's transformer without CLIP or a guidance input. T5's tokens alone,
    encoded with their attention mask, and that mask (all but the first padding token
    masked out) beside the image tokens' in the transformer's attention; real
    classifier-free guidance with the negative prompt, 5 by default (ChromaPipeline's)."""

    name = "Chroma"
    pipelines = ("ChromaPipeline", "ChromaImg2ImgPipeline", "ChromaInpaintPipeline")
    encoders = (("tokenizer", "text_encoder"),)
    guided = True
    default_cfg = 5.0
    controlnets = ()  # Flux.1's ControlNets take CLIP's pooled projection, which Chroma has not
    # Guided with a negative prompt, as the UNets and SD3, not as Flux.1 dev.
    embed = Family.embed
    extra_args = Family.extra_args

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return _has(keys, "distilled_guidance_layer.")

    def defaults(self) -> tuple[str, int, float]:
        return self.default_schedule, self.default_steps, self.default_cfg

    def _encode(self, text: str) -> dict[str, "Tensor"]:
        import torch

        words = self.text["tokenizer"]
        length = min(self.t5_length, words.model_max_length)
        ids = words(text, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
        mask = ids.attention_mask.to(self.device)
        embedded = self.text["text_encoder"](ids.input_ids.to(self.device), attention_mask=mask)[0]
        # The first padding token stays visible, as the model was trained.
        visible = torch.arange(mask.shape[1], device=self.device)[None] <= mask.sum(dim=1, keepdim=True)
        return {"text": embedded.float(), "text_mask": visible.float()}

    @staticmethod
    def velocity(transformer: "nn.Module", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        tokens, image_ids = _tokens(x_t, cond)
        mask = torch.cat([_batch(cond["text_mask"], n), cond["text_mask"].new_ones(n, tokens.shape[1])], dim=1)
        v = transformer(
            hidden_states=tokens, timestep=t, encoder_hidden_states=_batch(cond["text"], n),
            txt_ids=x_t.new_zeros(cond["text"].shape[1], 3), img_ids=image_ids, attention_mask=mask,
        ).sample
        return _unpack(v, x_t)


class FluxFill(Flux):
    """FLUX.1 Fill: Flux.1 dev whose tokens also carry the inpainting input, the masked
    image's latent and the mask at the VAE's factor (each f x f block of mask pixels as
    f^2 channels of its latent pixel), packed 2x2 beside the latent's, as diffusers'
    FluxFillPipeline; guidance input 30 by default, as there."""

    name = "FLUX.1 Fill"
    pipelines = ("FluxFillPipeline",)
    default_cfg = 30.0
    default_steps = 28
    controlnets = ()  # diffusers has no ControlNet pipeline for it

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return False  # its tensors are named as Flux.1's: single Fill files are not told apart; its folder loads

    def kind(self, latent: int) -> str:
        channels = self.config.in_channels
        mask = channels // self.pack**2 - 2 * latent  # the mask's channels: the VAE's factor squared
        if channels % self.pack**2 or mask < 1 or round(mask**0.5) ** 2 != mask:
            raise InputError(
                f"--model {self.source}: the transformer takes {self.config.in_channels} channels, which are not the "
                f"latent's ({latent}), the masked latent's and a mask's at the VAE's factor, each packed 2x2"
            )
        return "inpainting"

    @staticmethod
    def inpainting_input(mask: "Tensor", masked: "Tensor") -> "Tensor":
        """The masked image's latent (1, C, h, w), then the mask (1, 1, H, W) as
        (1, (H/h)^2, h, w): FluxFillPipeline's layout, before packing."""
        import torch
        import torch.nn.functional as F

        return torch.cat([masked, F.pixel_unshuffle(mask, mask.shape[-1] // masked.shape[-1])], dim=1)


def _chat(family: Family, text: str, thinking: bool) -> tuple["Tensor", "Tensor"]:
    """A prompt as the Qwen3 pipelines tokenise it: the user's message in the tokenizer's
    chat template, followed by the assistant's turn (``thinking``: Qwen3's thinking mode
    on, as Z-Image; off, an empty thinking block, as FLUX.2), padded to the family's
    ``text_length`` (at most the tokenizer's): (ids, attention mask), each (1, length)."""
    words = family.text["tokenizer"]
    chat = words.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    length = min(family.text_length, words.model_max_length)
    ids = words(chat, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
    return ids.input_ids.to(family.device), ids.attention_mask.to(family.device)


class ZImage(FlowFamily):
    """Z-Image and Z-Image Turbo: one stream of text and image tokens. The text is Qwen3's
    second-to-last hidden state of the chat-templated prompt, its real tokens only (the
    mask rides along so that prompt and negative batch); the transformer patchifies
    2x2 itself, counts time from the noise (1 - t) and predicts -v. Classifier-free
    guidance as ZImagePipeline's defaults (no normalisation or truncation): its
    guidance_scale g is our cfg g + 1. Turbo is distilled to 8 steps without guidance
    (its pipelines' guidance_scale 0); its configs are the base's, so it is told by its
    name (a folder or Hub id with "turbo" in it)."""

    name = "Z-Image"
    pipelines = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline")
    native_size = 1024
    # ZImagePipeline's own defaults: 50 steps, guidance_scale 5.
    default_steps = 50
    default_cfg = 6.0
    turbo_steps = 8
    text_length = 512
    one_over_n = True

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return _has(keys, "layers.0.adaLN_modulation.") and _has(keys, "noise_refiner.", "context_refiner.")

    def defaults(self) -> tuple[str, int, float]:
        if "turbo" in self.source.lower():
            return self.default_schedule, self.turbo_steps, 1.0
        return super().defaults()

    def _encode(self, text: str) -> dict[str, "Tensor"]:
        ids, mask = _chat(self, text, thinking=True)
        hidden = self.text["text_encoder"](input_ids=ids, attention_mask=mask.bool(), output_hidden_states=True).hidden_states[-2]
        return {"text": hidden.float(), "text_mask": mask.float()}

    @staticmethod
    def velocity(transformer: "nn.Module", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        text, mask = _batch(cond["text"], n), _batch(cond["text_mask"], n).bool()
        # One (C, frames = 1, h, w) latent and one caption of its real tokens per sample, as lists.
        out = transformer(list(x_t.unsqueeze(2).unbind(0)), 1 - t, [text[i][mask[i]] for i in range(n)], return_dict=False)[0]
        return -torch.stack(out).squeeze(2)


class Flux2Klein(FlowFamily):
    """FLUX.2 Klein: Qwen3's hidden states after layers 9, 18 and 27 of the
    chat-templated prompt, side by side for each token (all of them, padding included,
    with position ids (0, 0, 0, token)). The sampler runs on the latent FLUX.2 diffuses:
    the VAE's, patchified 2x2 (128 channels at a sixteenth of the pixels) and
    normalised by the VAE's batch-norm running statistics; each latent pixel is a token
    with position ids (0, row, col, 0). The distilled checkpoints (``is_distilled`` in
    model_index.json) run 4 steps in one pass, any cfg ignored, as Flux2KleinPipeline;
    the base runs classifier-free guidance (4, 50 steps: its defaults). FLUX.2's shift
    depends on the steps too (:func:`~kdiff_differential.models.flow.flux2_mu`)."""

    name = "FLUX.2 Klein"
    pipelines = ("Flux2KleinPipeline", "Flux2KleinInpaintPipeline")
    native_size = 1024
    default_steps = 50
    default_cfg = 4.0
    patch = 1
    text_length = 512
    hidden_layers = (9, 18, 27)
    one_over_n = True

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return False  # its tensors are named as FLUX.2 dev's (another text encoder): single Klein files are not told apart; its folder loads

    def distilled(self) -> bool:
        return bool(self.index.get("is_distilled", False))

    def defaults(self) -> tuple[str, int, float]:
        if self.distilled():
            return self.default_schedule, FEW_STEPS, 1.0
        return super().defaults()

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float) -> dict[str, Any]:
        return super().extra_args(cond, uncond, 1.0 if self.distilled() else cfg)

    def shift_options(self, latent_size: tuple[int, int]) -> dict[str, Any]:
        """Every latent pixel is a token; mu for n steps is FLUX.2's, the range's at the default steps."""
        from functools import partial

        from .flow import flux2_mu

        return {"one_over_n": True, "mu_of_steps": partial(flux2_mu, latent_size[0] * latent_size[1]), "steps": self.defaults()[1]}

    def _encode(self, text: str) -> dict[str, "Tensor"]:
        import torch

        ids, mask = _chat(self, text, thinking=False)
        hidden = self.text["text_encoder"](input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        return {"text": torch.cat([hidden[layer] for layer in self.hidden_layers], dim=-1).float()}

    @staticmethod
    def velocity(transformer: "nn.Module", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n, channels, height, width = x_t.shape
        rows, cols = torch.meshgrid(torch.arange(height, device=x_t.device), torch.arange(width, device=x_t.device), indexing="ij")
        zeros = torch.zeros_like(rows)
        image_ids = torch.stack([zeros, rows, cols, zeros], dim=-1).reshape(-1, 4)
        words = torch.arange(cond["text"].shape[1], device=x_t.device)
        text_ids = torch.stack([torch.zeros_like(words)] * 3 + [words], dim=-1)
        v = transformer(
            hidden_states=x_t.flatten(2).transpose(1, 2), encoder_hidden_states=_batch(cond["text"], n), timestep=t,
            img_ids=image_ids, txt_ids=text_ids, guidance=None,
        ).sample
        return v.transpose(1, 2).reshape(n, channels, height, width)

    @staticmethod
    def latent_factor(vae: "nn.Module") -> int:
        """The VAE's downsampling, times the 2x2 patches."""
        return 2 ** len(vae.config.block_out_channels)

    @staticmethod
    def latent_channels(vae: "nn.Module") -> int:
        return vae.config.latent_channels * 4

    @staticmethod
    def _statistics(vae: "nn.Module") -> tuple["Tensor", "Tensor"]:
        """The batch norm's running mean and standard deviation, (1, 4C, 1, 1) float32."""
        import torch

        mean = vae.bn.running_mean.float().view(1, -1, 1, 1)
        return mean, torch.sqrt(vae.bn.running_var.float().view(1, -1, 1, 1) + vae.config.batch_norm_eps)

    @classmethod
    def vae_encode(cls, vae: "nn.Module", pixels: "Tensor") -> "Tensor":
        """Pixels (1, 3, H, W) in [-1, 1] -> the posterior's mode, patchified 2x2 and
        normalised: (1, 4C, H/16, W/16) float32."""
        import torch.nn.functional as F

        mean, std = cls._statistics(vae)
        latent = F.pixel_unshuffle(vae.encode(pixels.to(vae.dtype)).latent_dist.mode().float(), 2)
        return (latent - mean.to(latent.device)) / std.to(latent.device)

    @classmethod
    def vae_decode(cls, vae: "nn.Module", latent: "Tensor") -> "Tensor":
        import torch.nn.functional as F

        mean, std = cls._statistics(vae)
        z = F.pixel_shuffle(latent * std.to(latent.device) + mean.to(latent.device), 2)
        return vae.decode(z.to(vae.dtype)).sample.float()


class QwenImage(FlowFamily):
    """Qwen-Image: Qwen2.5-VL's last hidden states of the prompt in a chat template, the
    template's first tokens dropped (as QwenImagePipeline); a 3D causal VAE whose latent
    (1, C, 1, h, w) is normalised per channel by its config's ``latents_mean`` and
    ``latents_std`` (the sampler sees it without the frame axis); the latent packed 2x2
    into tokens. True classifier-free guidance with the negative prompt, above cfg 1
    only, inside the call: the guided velocity rescaled per token to the prompt's norm,
    as diffusers does (a rescale no guidance on x0 can express)."""

    name = "Qwen-Image"
    pipelines = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
    native_size = 1024
    config_repo = "Qwen/Qwen-Image"
    guided = False  # the guidance runs in velocity(), see the docstring
    pack = 2
    # QwenImagePipeline's defaults (true_cfg_scale, num_inference_steps).
    default_steps = 50
    default_cfg = 4.0
    # The chat template the text encoder reads the prompt in, and how many of its first
    # tokens (the system prompt's) are dropped from the hidden states: the pipeline's.
    template = (
        "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
        "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    )
    template_start = 34
    max_tokens = 512  # the pipeline's max_sequence_length

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        # The text stream's RMSNorm before its projection (Qwen-Image 2.1's sits inside txt_in).
        return _has(keys, "txt_norm.")

    @staticmethod
    def latent_factor(vae: "nn.Module") -> int:
        """Each of the 3D VAE's temporal downsampling stages halves the sides too."""
        return 2 ** len(vae.config.temperal_downsample)

    @staticmethod
    def latent_channels(vae: "nn.Module") -> int:
        return vae.config.z_dim

    @staticmethod
    def _normalisation(vae: "nn.Module", like: "Tensor") -> tuple["Tensor", "Tensor"]:
        """The config's per-channel (mean, std), each (1, C, 1, 1, 1) as ``like``."""
        import torch

        return tuple(torch.tensor(vae.config[key], dtype=like.dtype, device=like.device).view(1, -1, 1, 1, 1) for key in ("latents_mean", "latents_std"))  # type: ignore[return-value]

    @classmethod
    def vae_encode(cls, vae: "nn.Module", pixels: "Tensor") -> "Tensor":
        """Pixels (1, 3, H, W) in [-1, 1] as one frame -> the posterior's mode (as
        QwenImageEditPipeline takes it), normalised per channel, without the frame axis:
        (1, C, h, w), float32."""
        latent = vae.encode(pixels[:, :, None].to(vae.dtype)).latent_dist.mode().float()
        mean, std = cls._normalisation(vae, latent)
        return ((latent - mean) / std)[:, :, 0]

    @classmethod
    def vae_decode(cls, vae: "nn.Module", latent: "Tensor") -> "Tensor":
        """The inverse of :meth:`vae_encode`: (1, C, h, w) -> pixels (1, 3, H, W), float32."""
        mean, std = cls._normalisation(vae, latent.float())
        z = latent.float()[:, :, None] * std + mean
        return vae.decode(z.to(vae.dtype)).sample[:, :, 0].float()

    def _hidden(self, inputs: dict[str, "Tensor"]) -> "Tensor":
        """The text encoder's last hidden states for ``inputs`` (batch 1, no padding),
        the template's first tokens dropped: (1, T, D), float32."""
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        out = self.text["text_encoder"](**inputs, output_hidden_states=True)
        return out.hidden_states[-1][:, self.template_start :].float()

    def _encode(self, text: str) -> dict[str, "Tensor"]:
        words = self.text["tokenizer"]
        # The encoder is causal: the tokens past the kept ones change none of theirs.
        ids = words(self.template.format(text), max_length=self.template_start + self.max_tokens, truncation=True, return_tensors="pt")
        return {"text": self._hidden({"input_ids": ids.input_ids, "attention_mask": ids.attention_mask})}

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float) -> dict[str, Any]:
        """The negative prompt's tokens (``negative``) and the scale (``cfg``) go in
        ``cond``, for :meth:`velocity`; at cfg 1 or below the prompt's alone, as diffusers."""
        import torch

        if uncond is None or cfg <= 1:
            return {"cond": cond}
        return {"cond": {**cond, "negative": uncond["text"], "cfg": torch.tensor([float(cfg)], device=self.device)}}

    @staticmethod
    def velocity(transformer: "nn.Module", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        tokens = _pack(x_t)
        outputs = tokens.shape[1]
        # Each image's (frames, rows, columns) of tokens, for the transformer's positions.
        shapes = [(1, x_t.shape[-2] // 2, x_t.shape[-1] // 2)]
        if "reference" in cond:  # Edit: the reference's tokens after the latent's
            reference = cond["reference"]
            tokens = torch.cat([tokens, _pack(_batch(reference, n))], dim=1)
            shapes.append((1, reference.shape[-2] // 2, reference.shape[-1] // 2))

        def predict(text: "Tensor") -> "Tensor":
            out = transformer(hidden_states=tokens, timestep=t, encoder_hidden_states=_batch(text, n), img_shapes=[shapes] * n)
            return out.sample[:, :outputs]

        v = predict(cond["text"])
        if "negative" in cond:
            negative = predict(cond["negative"])
            guided = negative + cond["cfg"] * (v - negative)
            v = guided * (v.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))
        return _unpack(v, x_t)


class QwenImageEdit(QwenImage):
    """Qwen-Image-Edit: Qwen-Image editing from a reference image, the input image at
    the edit's size. Its latent's tokens go after the output latent's (a second image
    to the transformer's positions); only the output tokens are the prediction, so the
    change map applies to them alone. The text encoder sees the reference too: the
    folder's Qwen2VLProcessor puts it in the prompt, in Edit's template (its first 64
    tokens dropped), as QwenImageEditPipeline."""

    name = "Qwen-Image-Edit"
    pipelines = ("QwenImageEditPipeline", "QwenImageEditInpaintPipeline")
    encoders = (("processor", "text_encoder"),)
    reference = True
    template = (
        "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), "
        "then explain how the user's text instruction should alter or modify the image. Generate a new image that meets the "
        "user's requirements while maintaining consistency with the original input where appropriate.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
    )
    template_start = 64

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return False  # its tensors are named as Qwen-Image's: single Edit files are not told apart; its folder loads

    def embed_reference(self, prompt: str, negative: str, size: tuple[int, int], image: "Tensor", latent: "Tensor") -> "Conditions":
        """The prompt and the negative prompt each read with the reference ``image``
        (1, 3, H, W) in [-1, 1], which the processor takes as the pipeline hands it, a
        PIL image; both with the reference's ``latent`` as ``reference``."""
        import torch
        from PIL import Image

        from ..images import to_image

        picture = Image.fromarray(to_image(image))
        with torch.no_grad():
            cond, uncond = ({"text": self._hidden(self._inputs(text, picture)), "reference": latent} for text in (prompt, negative))
        return cond, uncond

    def _inputs(self, text: str, picture: Any) -> dict[str, "Tensor"]:
        """The encoder's inputs for ``text`` in the template around ``picture``: the
        ids (the image's placeholder repeated once per merged patch), their mask, the
        patches and their grid."""
        inputs = self.text["processor"](text=[self.template.format(text)], images=picture, padding=True, return_tensors="pt")
        return {key: inputs[key] for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}


# The registry. Each family's owns() and owns_keys() exclude the others', so the order does not matter.
FAMILIES: tuple[type[Family], ...] = (
    StableDiffusion, StableDiffusionXL, StableDiffusionXLRefiner, StableDiffusion3, Flux, FluxFill, FluxKontext, Chroma,
    ZImage, Flux2Klein, QwenImage, QwenImageEdit,
)


def supported() -> str:
    """The families this project runs, from the registry, for messages and ``--help``."""
    return ", ".join(family.name for family in FAMILIES)


def family_of_index(index: dict[str, Any], source: str) -> type[Family]:
    """The family whose pipeline ``model_index.json`` (``index``) describes; InputError
    (one line, naming what is supported) for a pipeline no family owns."""
    for family in FAMILIES:
        if family.owns(index):
            return family
    pipeline = str(index.get("_class_name", "?"))
    raise InputError(f"--model {source}: a {pipeline} folder, which is not supported; supported: {supported()}")


def family_of_keys(keys: Collection[str], source: str) -> type[Family]:
    """The family of a single checkpoint file from its tensor names; InputError when no
    family, or more than one, recognises them."""
    owners = [family for family in FAMILIES if family.owns_keys(keys)]
    if len(owners) != 1:
        found = "no" if not owners else " and ".join(family.name for family in owners)
        raise InputError(f"--model {source}: {found} model family recognises this checkpoint's tensors; supported: {supported()}")
    return owners[0]
