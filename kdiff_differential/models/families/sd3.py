"""Stable Diffusion 3 and 3.5."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .base import FlowFamily, Network, batched, control_latent, has_tensors

if TYPE_CHECKING:
    from torch import Tensor, nn


class StableDiffusion3(FlowFamily):
    """SD3/SD3.5: two CLIP models with projection (penultimate hidden states side by
    side, zero-padded to T5's width, then T5's tokens after them; the pooled projections
    concatenated) and classifier-free guidance with a negative prompt. A folder without
    T5 gets zeros for its tokens, as in diffusers."""

    name = "Stable Diffusion 3/3.5"
    pipelines = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    native_size = 1024
    diffusers_pipeline = "sd3"
    encoders = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"), ("tokenizer_3", "text_encoder_3"))
    optional = ("tokenizer_3", "text_encoder_3")
    t5_length = 256
    controlnets = ("SD3ControlNetModel",)
    control_fit = ("patch_size", "attention_head_dim", "num_attention_heads", "pooled_projection_dim")
    control_outputs = ("block_controlnet_hidden_states",)

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return has_tensors(keys, "joint_blocks.0.")

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
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
    def velocity(transformer: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        n = x_t.shape[0]
        inputs = {"hidden_states": x_t, "timestep": t * 1000, "encoder_hidden_states": batched(cond["text"], n), "pooled_projections": batched(cond["pooled"], n)}
        residuals = {} if control is None else control.residuals(n, **inputs)
        return transformer(**inputs, **residuals).sample

    def control_condition(self, image: "Tensor", config: Any, vae: "Network") -> "Tensor":
        """The control image's latent (its mode), scaled; shifted unless the ControlNet
        zeroes its pooled projection (InstantX's, trained without the shift), as diffusers."""
        return control_latent(image, vae, shifted=not config.get("force_zeros_for_pooled_projection", True))

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
