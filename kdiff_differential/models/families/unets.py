"""The UNet families: Stable Diffusion 1.x/2.x, SDXL and the SDXL refiner, their UNet
wrapped as a CompVis model (:mod:`..networks`)."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional

from ...errors import InputError
from .base import FEW_STEPS, Family, Network, has_tensors

if TYPE_CHECKING:
    from torch import Tensor, nn

    Conditions = tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]


def _refiner(index: dict[str, Any]) -> bool:
    """Whether an SDXL ``model_index.json`` is the refiner's: the second encoder without the first."""
    return "text_encoder_2" in index and not (index.get("text_encoder") or [None])[-1]


class StableDiffusion(Family):
    """Stable Diffusion 1.x/2.x: one CLIP text encoder, its last hidden state as
    ``crossattn``; a UNet with the CompVis interface, epsilon or v prediction."""

    name = "Stable Diffusion 1.x/2.x"
    pipelines: tuple[str, ...] = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline", "StableDiffusionKDiffusionPipeline")
    controlnets: tuple[str, ...] = ("ControlNetModel",)
    # Its residuals join the UNet's blocks: the same widths, text width and added conditioning.
    control_fit: tuple[str, ...] = ("block_out_channels", "cross_attention_dim", "addition_embed_type")
    control_outputs: tuple[str, ...] = ("down_block_additional_residuals", "mid_block_additional_residual")

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        # SDXL's UNets embed the pooled text and time ids (label_emb); SD 1.x/2.x's do not.
        return has_tensors(keys, "input_blocks.") and not has_tensors(keys, "label_emb.")

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
                f"model={self.source}: the UNet takes {channels} channels and the VAE gives {latent}; "
                f"supported: {latent} (text-to-image) or {2 * latent + 1} (inpainting)"
            )
        return "inpainting" if channels == 2 * latent + 1 else "text-to-image"

    def denoiser(self, network: "Network", scheduler: dict[str, Any], latent_size: tuple[int, ...]) -> "nn.Module":
        from ..networks import compvis_denoiser

        return compvis_denoiser(network, scheduler, self.diffusers_pipeline)

    @staticmethod
    def prediction(scheduler: dict[str, Any]) -> str:
        return f"{scheduler.get('prediction_type', 'epsilon')} prediction"

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        return {"crossattn": self.text["text_encoder"](self.tokens("tokenizer", text))[0].float()}


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP encoders, their penultimate hidden states concatenated as
    ``crossattn``, the second's pooled projection as ``text_embeds``, and ``time_ids`` =
    (original H, W, crop top, left = 0, 0, target H, W). With ``force_zeros_for_empty_prompt``
    an empty negative prompt is all zeros, as diffusers does it."""

    name = "Stable Diffusion XL"
    pipelines: tuple[str, ...] = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline", "StableDiffusionXLKDiffusionPipeline")
    native_size = 1024
    encoders: tuple[tuple[str, str], ...] = (("tokenizer", "text_encoder"), ("tokenizer_2", "text_encoder_2"))
    controlnets: tuple[str, ...] = ("ControlNetModel", "ControlNetUnionModel")

    @classmethod
    def owns(cls, index: dict[str, Any]) -> bool:
        return super().owns(index) and not _refiner(index)

    @classmethod
    def owns_keys(cls, keys: Collection[str]) -> bool:
        # A UNet alone is read as the base's: the refiner is told apart by its text encoder.
        return has_tensors(keys, "label_emb.") and not StableDiffusionXLRefiner.owns_keys(keys)

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        import torch

        hidden = []
        for tokenizer, encoder in self.encoders:
            out = self.text[encoder](self.tokens(tokenizer, text), output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
        # The pooled embedding is the second (last) encoder's projection.
        return {"crossattn": torch.cat(hidden, dim=-1).float(), "text_embeds": out.text_embeds.float()}

    def embed(self, prompt: str, negative: str, size: tuple[int, ...]) -> "Conditions":
        import torch

        with torch.no_grad():
            cond = self.encode_text(prompt)
            zeros = self.index.get("force_zeros_for_empty_prompt", True) and not negative
            uncond = {k: torch.zeros_like(v) for k, v in cond.items()} if zeros else self.encode_text(negative)
        return {**cond, "time_ids": self.time_ids(size, True)}, {**uncond, "time_ids": self.time_ids(size, False)}

    def time_ids(self, size: tuple[int, ...], positive: bool) -> "Tensor":
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
        return has_tensors(keys, "label_emb.") and embedders == {"0"} and any(key.startswith("conditioner.embedders.0.model.") for key in keys)

    def time_ids(self, size: tuple[int, ...], positive: bool) -> "Tensor":
        import torch

        score = self.aesthetic_scores[0 if positive else 1]
        return torch.tensor([[*size, 0, 0, score]], dtype=torch.float32, device=self.device)
