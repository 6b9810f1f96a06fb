"""Z-Image and Z-Image Turbo."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any

from .base import FlowFamily, Network, batched, chat_tokens, has_tensors

if TYPE_CHECKING:
    from torch import Tensor, nn


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
    diffusers_pipeline = "z-image"
    # ZImagePipeline's own defaults: 50 steps, guidance_scale 5.
    default_steps = 50
    default_cfg = 6.0
    turbo_steps = 8
    text_length = 512
    one_over_n = True

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        return has_tensors(keys, "layers.0.adaLN_modulation.") and has_tensors(keys, "noise_refiner.", "context_refiner.")

    def defaults(self) -> tuple[str, int, float]:
        if "turbo" in self.source.lower():
            return self.default_schedule, self.turbo_steps, 1.0
        return super().defaults()

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        ids, mask = chat_tokens(self, text, thinking=True)
        hidden = self.text["text_encoder"](input_ids=ids, attention_mask=mask.bool(), output_hidden_states=True).hidden_states[-2]
        return {"text": hidden.float(), "text_mask": mask.float()}

    @staticmethod
    def velocity(transformer: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        text, mask = batched(cond["text"], n), batched(cond["text_mask"], n).bool()
        # One (C, frames = 1, h, w) latent and one caption of its real tokens per sample, as lists.
        out = transformer(list(x_t.unsqueeze(2).unbind(0)), 1 - t, [text[i][mask[i]] for i in range(n)], return_dict=False)[0]
        return -torch.stack(out).squeeze(2)
