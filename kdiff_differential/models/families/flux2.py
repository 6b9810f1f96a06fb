"""FLUX.2 Klein."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional

from .base import FEW_STEPS, FlowFamily, Network, batched, chat_tokens

if TYPE_CHECKING:
    from torch import Tensor, nn


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

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float,
                   cfg_2: Optional[float] = None) -> dict[str, Any]:
        return super().extra_args(cond, uncond, 1.0 if self.distilled() else cfg)

    def shift_options(self, latent_size: tuple[int, ...]) -> dict[str, Any]:
        """Every latent pixel is a token; mu for n steps is FLUX.2's, the range's at the default steps."""
        from functools import partial

        from ..flow import flux2_mu

        return {"one_over_n": self.one_over_n, "mu_of_steps": partial(flux2_mu, latent_size[0] * latent_size[1]), "steps": self.defaults()[1]}

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        import torch

        ids, mask = chat_tokens(self, text, thinking=False)
        hidden = self.text["text_encoder"](input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False).hidden_states
        return {"text": torch.cat([hidden[layer] for layer in self.hidden_layers], dim=-1).float()}

    @staticmethod
    def velocity(transformer: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n, channels, height, width = x_t.shape
        rows, cols = torch.meshgrid(torch.arange(height, device=x_t.device), torch.arange(width, device=x_t.device), indexing="ij")
        zeros = torch.zeros_like(rows)
        image_ids = torch.stack([zeros, rows, cols, zeros], dim=-1).reshape(-1, 4)
        words = torch.arange(cond["text"].shape[1], device=x_t.device)
        text_ids = torch.stack([torch.zeros_like(words)] * 3 + [words], dim=-1)
        v = transformer(
            hidden_states=x_t.flatten(2).transpose(1, 2), encoder_hidden_states=batched(cond["text"], n), timestep=t,
            img_ids=image_ids, txt_ids=text_ids, guidance=None,
        ).sample
        return v.transpose(1, 2).reshape(n, channels, height, width)

    @staticmethod
    def latent_factor(vae: "Network") -> int:
        """The VAE's downsampling, times the 2x2 patches."""
        return 2 ** len(vae.config.block_out_channels)

    @staticmethod
    def latent_channels(vae: "Network") -> int:
        return vae.config.latent_channels * 4

    @staticmethod
    def _statistics(vae: "Network") -> tuple["Tensor", "Tensor"]:
        """The batch norm's running mean and standard deviation, (1, 4C, 1, 1) float32."""
        import torch

        mean = vae.bn.running_mean.float().view(1, -1, 1, 1)
        return mean, torch.sqrt(vae.bn.running_var.float().view(1, -1, 1, 1) + vae.config.batch_norm_eps)

    @classmethod
    def vae_encode(cls, vae: "Network", pixels: "Tensor") -> "Tensor":
        """Pixels (1, 3, H, W) in [-1, 1] -> the posterior's mode, patchified 2x2 and
        normalised: (1, 4C, H/16, W/16) float32."""
        import torch.nn.functional as F

        mean, std = cls._statistics(vae)
        latent = F.pixel_unshuffle(vae.encode(pixels.to(vae.dtype)).latent_dist.mode().float(), 2)
        return (latent - mean.to(latent.device)) / std.to(latent.device)

    @classmethod
    def vae_decode(cls, vae: "Network", latent: "Tensor") -> "Tensor":
        import torch.nn.functional as F

        mean, std = cls._statistics(vae)
        z = F.pixel_shuffle(latent * std.to(latent.device) + mean.to(latent.device), 2)
        return vae.decode(z.to(vae.dtype)).sample.float()
