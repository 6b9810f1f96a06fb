"""Wan 2.1 and 2.2: text-to-video flow transformers on a causal 3D VAE (docs/models.md, "Wan")."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from .base import FlowFamily, Network, batched, channel_statistics

if TYPE_CHECKING:
    from torch import Tensor, nn


class Wan(FlowFamily):
    """Wan 2.1 (T2V 1.3B and 14B), Wan 2.2 TI2V-5B and A14B, as WanPipeline runs them.

    The prompt is cleaned as the pipeline does, read by UMT5 (its last hidden states, the
    real tokens kept and zeros after them up to 512 tokens). The latent is (1, C, F, h, w):
    the VAE's mode normalised per channel by its config's ``latents_mean`` and
    ``latents_std``; an image is a one-frame clip. Classifier-free guidance with the
    negative prompt runs inside the call (WanPipeline's guidance_scale g is our cfg g),
    since Wan 2.2 A14B guides its two experts by two scales: ``transformer`` where the
    timestep is at least ``boundary_ratio`` times the training steps, ``transformer_2``
    below, with ``cfg_2`` (default: cfg). TI2V-5B (``expand_timesteps``) takes one timestep
    per token. The schedule is the scheduler's (UniPC with flow sigmas): ``flow_shift``,
    a constant shift, on its spacing (FlowDenoiser's ``flow_sigmas``)."""

    name = "Wan 2.1/2.2"
    pipelines = ("WanPipeline", "WanVideoToVideoPipeline")
    # About 832 x 480 (TI2V-5B: 1280 x 704) in area, a multiple of the VAE's factor times the patch.
    native_size = 640
    native_size_ti2v = 960
    guided = False  # the guidance runs in velocity(), see the docstring
    exact_time = True  # float32 timesteps, as the pipeline passes them and compares them with the boundary
    makes = "text-to-video"  # image-to-video folders (36 input channels) are refused by kind()
    # WanPipeline's defaults (num_inference_steps, guidance_scale, max_sequence_length).
    default_steps = 50
    default_cfg = 5.0
    text_length = 512
    second = "transformer_2"
    video_frames = 4

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.boundary: Optional[float] = self.index.get("boundary_ratio")
        self.per_token = bool(self.index.get("expand_timesteps", False))
        self.experts = 1 if self.boundary is None else 2
        if self.per_token:
            self.native_size = self.native_size_ti2v

    @classmethod
    def parts(cls, index: dict[str, Any]) -> list[str]:
        """The parts, with the low-noise expert ``transformer_2`` where the folder switches at a ``boundary_ratio``."""
        return super().parts(index) + ([cls.second] if index.get("boundary_ratio") is not None else [])

    @classmethod
    def denoising(cls, parts: dict[str, Any]) -> "nn.Module":
        """The experts: ``transformer``, and ``transformer_2`` where the folder has one."""
        from ..networks import Experts

        return Experts([parts[name] for name in (cls.network, cls.second) if parts.get(name) is not None])

    @classmethod
    def frames_per_latent(cls, vae: "Network") -> Optional[int]:
        return vae.config.scale_factor_temporal

    @staticmethod
    def latent_factor(vae: "Network") -> int:
        return vae.config.scale_factor_spatial

    @staticmethod
    def latent_channels(vae: "Network") -> int:
        return vae.config.z_dim

    @staticmethod
    def vae_encode(vae: "Network", pixels: "Tensor") -> "Tensor":
        """Pixels (1, 3, T, H, W) in [-1, 1], or an image (1, 3, H, W) as one frame -> the
        posterior's mode normalised per channel, (1, C, F, h, w), float32."""
        clip = pixels if pixels.ndim == 5 else pixels[:, :, None]
        latent = vae.encode(clip.to(vae.dtype)).latent_dist.mode().float()
        mean, std = channel_statistics(vae, latent)
        return (latent - mean) / std

    @staticmethod
    def vae_decode(vae: "Network", latent: "Tensor") -> "Tensor":
        """The inverse of :meth:`vae_encode`: (1, C, F, h, w) -> pixels (1, 3, T, H, W), float32."""
        mean, std = channel_statistics(vae, latent.float())
        return vae.decode((latent.float() * std + mean).to(vae.dtype)).sample.float()

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        import torch
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        words = self.text["tokenizer"](
            [prompt_clean(text)], padding="max_length", max_length=self.text_length, truncation=True,
            add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
        )
        mask = words.attention_mask.to(self.device)
        hidden = self.text["text_encoder"](words.input_ids.to(self.device), mask).last_hidden_state.float()
        real = int(mask.gt(0).sum())
        return {"text": torch.cat([hidden[:, :real], hidden.new_zeros(1, self.text_length - real, hidden.shape[-1])], dim=1)}

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float, cfg_2: Optional[float] = None) -> dict[str, Any]:
        """The negative prompt (``negative``) and the scales go in ``cond``, for
        :meth:`velocity`; above cfg 1 only, as WanPipeline (whose second scale is then
        ``cfg_2``, default cfg)."""
        import torch

        if uncond is None or cfg <= 1:
            return {"cond": cond}
        scales = [float(cfg), float(cfg if cfg_2 is None else cfg_2)]
        return {"cond": {**cond, "negative": uncond["text"], "cfg": torch.tensor(scales, device=self.device)}}

    def denoiser(self, network: "Network", scheduler: dict[str, Any], latent_size: tuple[int, ...]) -> "nn.Module":
        model = super().denoiser(network, scheduler, latent_size)
        network.boundary = None if self.boundary is None else self.boundary * scheduler.get("num_train_timesteps", 1000)
        network.per_token = self.per_token
        return model

    @staticmethod
    def velocity(experts: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        n = x_t.shape[0]
        timestep = t * 1000
        # A batch shares its level (k-diffusion's samplers step every sample together).
        low = experts.boundary is not None and float(timestep[0]) < experts.boundary
        transformer = experts.experts[1 if low else 0]
        if experts.per_token:
            patch = transformer.config.patch_size
            tokens = (x_t.shape[2] // patch[0]) * (x_t.shape[3] // patch[1]) * (x_t.shape[4] // patch[2])
            timestep = timestep[:, None].expand(n, tokens)

        def predict(text: "Tensor") -> "Tensor":
            return transformer(hidden_states=x_t, timestep=timestep, encoder_hidden_states=batched(text, n), return_dict=False)[0]

        v = predict(cond["text"])
        if "negative" in cond:
            negative = predict(cond["negative"])
            v = negative + cond["cfg"][1 if low else 0] * (v - negative)
        return v

