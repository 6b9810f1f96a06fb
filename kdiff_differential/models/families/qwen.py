"""Qwen-Image and Qwen-Image-Edit."""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Any, Optional

from .base import FlowFamily, Network, batched, channel_statistics, has_tensors, pack_patches, unpack_patches

if TYPE_CHECKING:
    from torch import Tensor, nn

    Conditions = tuple[dict[str, Tensor], Optional[dict[str, Tensor]]]


class QwenImage(FlowFamily):
    """Qwen-Image: Qwen2.5-VL's last hidden states of the prompt in a chat template, the
    template's first tokens dropped (as QwenImagePipeline); a 3D causal VAE whose latent
    (1, C, 1, h, w) is normalised per channel by its config's ``latents_mean`` and
    ``latents_std`` (the sampler sees it without the frame axis); the latent packed 2x2
    into tokens. True classifier-free guidance with the negative prompt, above cfg 1
    only, inside the call: the guided velocity rescaled per token to the prompt's norm,
    as diffusers does (a rescale no guidance on x0 can express)."""

    name = "Qwen-Image"
    pipelines: tuple[str, ...] = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
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
        return has_tensors(keys, "txt_norm.")

    @staticmethod
    def latent_factor(vae: "Network") -> int:
        """Each of the 3D VAE's temporal downsampling stages halves the sides too."""
        return 2 ** len(vae.config.temperal_downsample)

    @staticmethod
    def latent_channels(vae: "Network") -> int:
        return vae.config.z_dim

    @classmethod
    def vae_encode(cls, vae: "Network", pixels: "Tensor") -> "Tensor":
        """Pixels (1, 3, H, W) in [-1, 1] as one frame -> the posterior's mode (as
        QwenImageEditPipeline takes it), normalised per channel, without the frame axis:
        (1, C, h, w), float32."""
        latent = vae.encode(pixels[:, :, None].to(vae.dtype)).latent_dist.mode().float()
        mean, std = channel_statistics(vae, latent)
        return ((latent - mean) / std)[:, :, 0]

    @classmethod
    def vae_decode(cls, vae: "Network", latent: "Tensor") -> "Tensor":
        """The inverse of :meth:`vae_encode`: (1, C, h, w) -> pixels (1, 3, H, W), float32."""
        mean, std = channel_statistics(vae, latent.float())
        z = latent.float()[:, :, None] * std + mean
        return vae.decode(z.to(vae.dtype)).sample[:, :, 0].float()

    def _hidden(self, inputs: dict[str, "Tensor"]) -> "Tensor":
        """The text encoder's last hidden states for ``inputs`` (batch 1, no padding),
        the template's first tokens dropped: (1, T, D), float32."""
        inputs = {key: value.to(self.device) for key, value in inputs.items()}
        out = self.text["text_encoder"](**inputs, output_hidden_states=True)
        return out.hidden_states[-1][:, self.template_start :].float()

    def encode_text(self, text: str) -> dict[str, "Tensor"]:
        words = self.text["tokenizer"]
        # The encoder is causal: the tokens past the kept ones change none of theirs.
        ids = words(self.template.format(text), max_length=self.template_start + self.max_tokens, truncation=True, return_tensors="pt")
        return {"text": self._hidden({"input_ids": ids.input_ids, "attention_mask": ids.attention_mask})}

    def extra_args(self, cond: dict[str, "Tensor"], uncond: Optional[dict[str, "Tensor"]], cfg: float,
                   cfg_2: Optional[float] = None) -> dict[str, Any]:
        """The negative prompt's tokens (``negative``) and the scale (``cfg``) go in
        ``cond``, for :meth:`velocity`; at cfg 1 or below the prompt's alone, as diffusers."""
        import torch

        if uncond is None or cfg <= 1:
            return {"cond": cond}
        return {"cond": {**cond, "negative": uncond["text"], "cfg": torch.tensor([float(cfg)], device=self.device)}}

    @staticmethod
    def velocity(transformer: "Network", x_t: "Tensor", t: "Tensor", cond: dict[str, "Tensor"], control: Any = None) -> "Tensor":
        import torch

        n = x_t.shape[0]
        tokens = pack_patches(x_t)
        outputs = tokens.shape[1]
        # Each image's (frames, rows, columns) of tokens, for the transformer's positions.
        shapes = [(1, x_t.shape[-2] // 2, x_t.shape[-1] // 2)]
        if "reference" in cond:  # Edit: the reference's tokens after the latent's
            reference = cond["reference"]
            tokens = torch.cat([tokens, pack_patches(batched(reference, n))], dim=1)
            shapes.append((1, reference.shape[-2] // 2, reference.shape[-1] // 2))

        def predict(text: "Tensor") -> "Tensor":
            out = transformer(hidden_states=tokens, timestep=t, encoder_hidden_states=batched(text, n), img_shapes=[shapes] * n)
            return out.sample[:, :outputs]

        v = predict(cond["text"])
        if "negative" in cond:
            negative = predict(cond["negative"])
            guided = negative + cond["cfg"] * (v - negative)
            v = guided * (v.norm(dim=-1, keepdim=True) / guided.norm(dim=-1, keepdim=True))
        return unpack_patches(v, x_t)


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

    def embed_reference(self, prompt: str, negative: str, size: tuple[int, ...], image: "Tensor", latent: "Tensor") -> "Conditions":
        """The prompt and the negative prompt each read with the reference ``image``
        (1, 3, H, W) in [-1, 1], which the processor takes as the pipeline hands it, a
        PIL image; both with the reference's ``latent`` as ``reference``."""
        import torch
        from PIL import Image

        from ...pixels import to_image

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
