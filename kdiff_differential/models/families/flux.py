"""Flux.1 and the families on its transformer: FLUX.1 Kontext, Chroma and FLUX.1 Fill."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional

from ...errors import InputError
from .base import FEW_STEPS, Family, FlowFamily, Network, batched, control_latent, has_tensors, pack_patches, unpack_patches

if TYPE_CHECKING:
    from torch import Tensor, nn

    Conditions = tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]


class Flux(FlowFamily):
    """Flux.1: CLIP's pooled output and T5's tokens. Guidance-distilled (dev): the
    guidance scale is an input of the transformer, one pass, no negative prompt;
    schnell has no guidance input. The latent goes in packed 2x2 into tokens with
    position ids, inside the call only: samplers and change maps see (N, C, H, W)."""

    name = "Flux.1"
    pipelines: tuple[str, ...] = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    native_size = 1024
    encoders: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    guided = False
    # The distilled guidance input is trained around 3.5 (diffusers' FluxPipeline default).
    default_cfg = 3.5
    pack = 2
    # Its pipelines pass their own times, linspace(1, 1/n, n), whatever the shift (schnell's is fixed).
    one_over_n = True
    t5_length = 512
    controlnets: tuple[str, ...] = ("FluxControlNetModel",)
    control_fit: tuple[str, ...] = ("attention_head_dim", "num_attention_heads", "joint_attention_dim", "pooled_projection_dim")
    control_outputs: tuple[str, ...] = ("controlnet_block_samples", "controlnet_single_block_samples")

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return has_tensors(keys, "double_blocks.0.") and not has_tensors(keys, "distilled_guidance_layer.")

    def defaults(self) -> tuple[str, int, float]:
        """schnell (no guidance input) is distilled to 4 steps."""
        if not self.config.get("guidance_embeds", False):
            return self.default_schedule, FEW_STEPS, self.default_cfg
        return super().defaults()

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        pooled = self.text["text_encoder"](self.tokens("tokenizer", text)).pooler_output
        t5 = self.text["text_encoder_2"](self.tokens("tokenizer_2", text, self.t5_length))[0]
        return {"text": t5.float(), "pooled": pooled.float()}

    def embed(self, prompt: str, negative: str, size: tuple[int, ...]) -> "Conditions":
        """The prompt alone: Flux.1 runs no guidance (dev's is an input of the network)."""
        import torch

        with torch.no_grad():
            return self.encode_text(prompt), None

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float,
                   cfg_2: Optional[float] = None) -> dict[str, Any]:
        import torch

        if self.config.get("guidance_embeds", False):
            cond = {**cond, "guidance": torch.tensor([float(cfg)], device=self.device)}
        return {"cond": cond}

    @staticmethod
    def velocity(transformer: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        tokens, image_ids = _tokens(x_t, cond)
        outputs = tokens.shape[1]
        if "reference" in cond:  # Kontext: the reference's tokens after the latent's, ids (1, row, col)
            reference, reference_ids = _tokens(batched(cond["reference"], n), {})
            tokens, image_ids = torch.cat([tokens, reference], dim=1), torch.cat([image_ids, reference_ids + reference_ids.new_tensor([1, 0, 0])])
        guidance = cond.get("guidance")
        inputs = {
            "hidden_states": tokens, "timestep": t, "guidance": None if guidance is None else guidance.expand(n),
            "pooled_projections": batched(cond["pooled"], n), "encoder_hidden_states": batched(cond["text"], n),
            "txt_ids": x_t.new_zeros(cond["text"].shape[1], 3), "img_ids": image_ids,
        }
        residuals = {} if control is None else control.residuals(n, **inputs)
        return unpack_patches(transformer(**inputs, **residuals).sample[:, :outputs], x_t)

    def check_controlnet(self, config: dict[str, Any], latent: int, given: str) -> None:
        super().check_controlnet(config, latent, given)
        if config.get("conditioning_embedding_channels") is not None:
            raise InputError(f"controlnet={given}: an XLabs-style Flux ControlNet (it embeds the image itself); supported: InstantX-style ones, which take its latent")

    def control_condition(self, image: "Tensor", config: Any, vae: "Network") -> "Tensor":
        """The control image's latent (its mode; diffusers draws a sample), shifted,
        scaled and packed into tokens as the latent is."""
        return pack_patches(control_latent(image, vae, shifted=True))

    @staticmethod
    def control_inputs(inputs: dict[str, Any], config: Any) -> dict[str, Any]:
        """The guidance input only for a ControlNet that embeds it, as diffusers."""
        return inputs if config.get("guidance_embeds", False) else {**inputs, "guidance": None}


def _tokens(x_t: "Tensor", cond: dict[str, "Tensor"]) -> tuple["Tensor", "Tensor"]:
    """Flux's tokens of x_t (:func:`pack_patches`) and their position ids (H/2 * W/2, 3). An
    inpainting input's channels (``cond["concat"]``) go beside the latent's in each token
    (packing the concatenation is concatenating the packings, as FluxFillPipeline does)."""
    import torch

    n, _, height, width = x_t.shape
    x_in = x_t if "concat" not in cond else torch.cat([x_t, batched(cond["concat"], n)], dim=1)
    # Built on x_t's device: a host-made table would be copied over at every call.
    rows, cols = torch.meshgrid(torch.arange(height // 2, device=x_t.device), torch.arange(width // 2, device=x_t.device), indexing="ij")
    return pack_patches(x_in), torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).to(x_t)


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
        return has_tensors(keys, "distilled_guidance_layer.")

    def defaults(self) -> tuple[str, int, float]:
        return self.default_schedule, self.default_steps, self.default_cfg

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
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
    def velocity(transformer: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        tokens, image_ids = _tokens(x_t, cond)
        mask = torch.cat([batched(cond["text_mask"], n), cond["text_mask"].new_ones(n, tokens.shape[1])], dim=1)
        v = transformer(
            hidden_states=tokens, timestep=t, encoder_hidden_states=batched(cond["text"], n),
            txt_ids=x_t.new_zeros(cond["text"].shape[1], 3), img_ids=image_ids, attention_mask=mask,
        ).sample
        return unpack_patches(v, x_t)


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
                f"model={self.source}: the transformer takes {self.config.in_channels} channels, which are not the "
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
