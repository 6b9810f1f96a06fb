"""Tiny random diffusers pipelines, one builder per model family, each saving its
pipeline with ``save_pretrained`` to ``folder/model`` and returning that folder
(tokenizers, chat templates and processors made here, nothing from a hub).

:data:`BUILDERS` names every family's folder; conftest.py builds each once per session
(``tiny_family``) and re-exports the builders for the test modules.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

WORDS = ("a", "red", "cat", "blurry")


def write_tokenizer(folder: Path) -> "transformers.CLIPTokenizer":
    """A CLIP tokenizer over a few whole words and the letters: no merges needed."""
    import transformers

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*"abcdefghijklmnopqrstuvwxyz", *(f"{c}</w>" for c in "abcdefghijklmnopqrstuvwxyz"), *(f"{w}</w>" for w in WORDS)]:
        vocab.setdefault(token, len(vocab))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)


def t5_tokenizer(length: int = 16) -> "transformers.PreTrainedTokenizerFast":
    """A word-level fast tokenizer shaped like T5's: pad 0, end-of-text 1 appended, unknown 2."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{word: 3 + i for i, word in enumerate(WORDS)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=length
    )


def flow_clip(width: int, projection: bool) -> "transformers.PreTrainedModel":
    """A tiny CLIP text encoder of ``width`` (with projection: SD3's), for the flow pipelines."""
    import transformers

    config = transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=100, hidden_size=width, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16, projection_dim=width,
    )
    return (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)


def tiny_t5(width: int) -> "transformers.T5EncoderModel":
    """A one-layer T5 encoder of ``width``."""
    import transformers

    return transformers.T5EncoderModel(transformers.T5Config(
        vocab_size=16, d_model=width, d_ff=37, d_kv=8, num_layers=1, num_heads=2, decoder_start_token_id=0,
    ))


def flow_vae() -> "diffusers.AutoencoderKL":
    """A tiny VAE with a shift factor and a scale, as the flow models' VAEs have."""
    import diffusers

    return diffusers.AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        shift_factor=0.1, scaling_factor=1.5,
    )


def randomise_zeros(module: torch.nn.Module) -> None:
    """Zero-initialised layers (output projections, gates) made random, so that the
    velocity depends on every input."""
    with torch.no_grad():
        for parameter in module.parameters():
            if not parameter.abs().sum():
                parameter.normal_(0, 0.05)


def save_tiny_sd(folder: Path, prediction: str) -> Path:
    """A tiny random Stable Diffusion 1.x pipeline saved with save_pretrained: folder/model."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4,
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    text_encoder = transformers.CLIPTextModel(transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=100, hidden_size=32, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=16,
    ))
    scheduler = diffusers.DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction, clip_sample=False,
        steps_offset=1,
    )
    pipeline = diffusers.StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=write_tokenizer(folder / "words"),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder / "model")
    return folder / "model"


def tiny_clip(projection: bool, hidden: int = 32):
    import transformers

    config = transformers.CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, vocab_size=100, hidden_size=hidden, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=3, max_position_embeddings=16, projection_dim=16,
    )
    return (transformers.CLIPTextModelWithProjection if projection else transformers.CLIPTextModel)(config)


def tiny_vae(force_upcast: bool):
    import diffusers

    return diffusers.AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4, force_upcast=force_upcast,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )


def save_tiny_sdxl(folder: Path, prediction: str, in_channels: int = 4) -> Path:
    """A tiny SDXL pipeline: encoders of width 32 and 24 (crossattn 56), pooled 16, time
    embedding 8 per id (projection 16 + 6 * 8 = 64)."""
    import diffusers

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=56, attention_head_dim=4, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=64, transformer_layers_per_block=1,
    )
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type=prediction, steps_offset=1,
    )
    kind = diffusers.StableDiffusionXLInpaintPipeline if in_channels == 9 else diffusers.StableDiffusionXLPipeline
    pipeline = kind(
        vae=tiny_vae(True), text_encoder=tiny_clip(False), text_encoder_2=tiny_clip(True, hidden=24),
        tokenizer=write_tokenizer(folder / "words"), tokenizer_2=write_tokenizer(folder / "words2"), unet=unet,
        scheduler=scheduler,
    )
    pipeline.save_pretrained(folder / "model")
    return folder / "model"


def save_tiny_schnell_fixed(folder: Path) -> Path:
    """Flux.1 schnell whose scheduler shifts by a constant (1: none) rather than with the resolution."""
    model = save_tiny_flow(folder, "flux", guidance=False)
    config = model / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "use_dynamic_shifting": False, "shift": 1.0}))
    return model


def save_tiny_sd_inpainting(folder: Path) -> Path:
    """The SD 1.x tiny pipeline with a 9-channel UNet, saved as an inpainting pipeline."""
    import diffusers

    model = save_tiny_sd(folder, "epsilon")
    config = json.loads((model / "unet" / "config.json").read_text())
    torch.manual_seed(1)
    unet = diffusers.UNet2DConditionModel(**{k: v for k, v in config.items() if not k.startswith("_")} | {"in_channels": 9})
    unet.save_pretrained(model / "unet")
    index = json.loads((model / "model_index.json").read_text())
    (model / "model_index.json").write_text(json.dumps(index | {"_class_name": "StableDiffusionInpaintPipeline"}))
    return model


def save_tiny_controlnet(folder: Path, model: Path, seed: int, kind: str = "ControlNetModel", **config) -> Path:
    """A tiny random ControlNet (diffusers class ``kind``, configured ``from_unet`` and
    ``config``) for the UNet of the pipeline at ``model``, saved to ``folder``; its
    zero-initialised layers (the zero convs, the conditioning embedding's last conv) made
    random, so that it changes the result; its conditioning embedding downsamples by the
    VAE's factor 2."""
    import diffusers

    unet = diffusers.UNet2DConditionModel.from_pretrained(model / "unet")
    torch.manual_seed(seed)
    cls = getattr(diffusers, kind)
    settings = {**cls.from_unet(unet, conditioning_embedding_out_channels=(8, 16)).config, **config}
    settings.pop("_use_default_values", None)  # which would put the defaults back over ``config``
    net = cls.from_config(settings)
    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(0, 0.3)
    net.save_pretrained(folder)
    return folder


def save_tiny_flow(folder: Path, family: str, guidance: bool = True) -> Path:
    """A tiny random SD3 (``family`` "sd3") or Flux.1 pipeline (dev; schnell without
    ``guidance``) saved to ``folder/model``; returns that folder."""
    import diffusers

    torch.manual_seed(0)
    words = write_tokenizer(folder / "words")
    if family == "sd3":
        transformer = diffusers.SD3Transformer2DModel(
            sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8,
            num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64,
            pos_embed_max_size=16,
        )
        randomise_zeros(transformer)
        pipeline = diffusers.StableDiffusion3Pipeline(
            transformer=transformer, scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=flow_vae(),
            text_encoder=flow_clip(32, True), tokenizer=words, text_encoder_2=flow_clip(32, True), tokenizer_2=words,
            text_encoder_3=tiny_t5(64), tokenizer_3=t5_tokenizer(),
        )
    else:
        transformer = diffusers.FluxTransformer2DModel(
            patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=guidance,
            axes_dims_rope=(4, 6, 6),
        )
        randomise_zeros(transformer)
        scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
        )
        pipeline = diffusers.FluxPipeline(
            transformer=transformer, scheduler=scheduler, vae=flow_vae(), text_encoder=flow_clip(32, False), tokenizer=words,
            text_encoder_2=tiny_t5(32), tokenizer_2=t5_tokenizer(),
        )
    pipeline.save_pretrained(folder / "model")
    return folder / "model"


def save_tiny_refiner(folder: Path) -> Path:
    """A tiny SDXL refiner: the second encoder alone (width 24 = crossattn, pooled 16),
    time ids (H, W, top, left, aesthetic score): projection 16 + 5 * 8 = 56; the negative
    prompt is encoded, not zeroed, as in the published refiner's folder."""
    import diffusers

    torch.manual_seed(2)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=24, attention_head_dim=4, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=56, transformer_layers_per_block=1,
    )
    scheduler = diffusers.EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    pipeline = diffusers.StableDiffusionXLImg2ImgPipeline(
        vae=tiny_vae(True), text_encoder=None, text_encoder_2=tiny_clip(True, hidden=24), tokenizer=None,
        tokenizer_2=write_tokenizer(folder / "words2"), unet=unet, scheduler=scheduler,
        requires_aesthetics_score=True, force_zeros_for_empty_prompt=False,
    )
    pipeline.save_pretrained(folder / "model")
    return folder / "model"


def flux_scheduler() -> "diffusers.FlowMatchEulerDiscreteScheduler":
    import diffusers

    return diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )


def save_tiny_flux_fill(folder: Path) -> Path:
    """Flux.1 Fill: 16 packed latent channels, 16 of the masked latent, 4 * 2^2 of the mask."""
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16 + 16 + 16, out_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    randomise_zeros(transformer)
    pipeline = diffusers.FluxFillPipeline(
        transformer=transformer, scheduler=flux_scheduler(), vae=flow_vae(), text_encoder=flow_clip(32, False),
        tokenizer=write_tokenizer(folder / "words"), text_encoder_2=tiny_t5(32), tokenizer_2=t5_tokenizer(),
    )
    pipeline.save_pretrained(folder / "model")
    return folder / "model"


def save_tiny_kontext(folder: Path) -> Path:
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    randomise_zeros(transformer)
    diffusers.FluxKontextPipeline(
        transformer=transformer, scheduler=flux_scheduler(), vae=flow_vae(), text_encoder=flow_clip(32, False),
        tokenizer=write_tokenizer(folder / "words"), text_encoder_2=tiny_t5(32), tokenizer_2=t5_tokenizer(),
    ).save_pretrained(folder / "model")
    return folder / "model"


def save_tiny_chroma(folder: Path) -> Path:
    import diffusers

    torch.manual_seed(0)
    transformer = diffusers.ChromaTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6), approximator_num_channels=8, approximator_hidden_dim=32,
        approximator_layers=1,
    )
    randomise_zeros(transformer)
    pipeline = diffusers.ChromaPipeline(
        transformer=transformer, scheduler=flux_scheduler(), vae=flow_vae(), text_encoder=tiny_t5(32), tokenizer=t5_tokenizer(),
    )
    pipeline.save_pretrained(folder / "model")
    return folder / "model"


QWEN3_LENGTH = 64  # text tokens: the tokenizer's model_max_length, and the pipelines' max_sequence_length
# Qwen3's chat template, its parts that the pipelines use: the user's turn, the assistant's, thinking on or off.
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def qwen3_tokenizer() -> "transformers.PreTrainedTokenizerBase":
    """A byte-level BPE tokenizer shaped like Qwen's (every byte a token, no merges), with
    its special tokens and :data:`CHAT` as its chat template."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    bytes_ = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE({byte: i for i, byte in enumerate(bytes_)}, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    words = transformers.Qwen2TokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=QWEN3_LENGTH,
    )
    words.chat_template = CHAT
    return words


def qwen3_config(layers: int) -> "transformers.Qwen3Config":
    import transformers

    return transformers.Qwen3Config(
        vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=2 * QWEN3_LENGTH,
    )


def save_tiny_zimage(folder: Path) -> Path:
    """Z-Image with a fixed-shift scheduler (as Turbo's): a 4-channel latent, a one-layer
    transformer, a two-layer Qwen3 (the pipeline reads its second-to-last hidden state)."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    transformer = diffusers.ZImageTransformer2DModel(
        in_channels=4, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
        axes_dims=[4, 6, 6], axes_lens=[256, 64, 64],
    )
    randomise_zeros(transformer)
    diffusers.ZImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=flow_vae(), transformer=transformer,
        text_encoder=transformers.Qwen3Model(qwen3_config(2)), tokenizer=qwen3_tokenizer(),
    ).save_pretrained(folder / "model")
    return folder / "model"


def save_tiny_klein(folder: Path, distilled: bool = True) -> Path:
    """FLUX.2 Klein: a 4-channel VAE (16 channels patchified) with random batch-norm
    statistics, a Qwen3 with the 27 layers whose hidden states the pipeline reads, and
    FLUX.2's scheduler config (shifting with the resolution). The base (not distilled)
    has the same weights."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    vae = diffusers.AutoencoderKLFlux2(
        block_out_channels=(32, 64), latent_channels=4, layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    )
    with torch.no_grad():
        vae.bn.running_mean.normal_(0, 0.5)
        vae.bn.running_var.uniform_(0.5, 2)
    transformer = diffusers.Flux2Transformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=48, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )
    randomise_zeros(transformer)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True)
    diffusers.Flux2KleinPipeline(
        scheduler=scheduler, vae=vae, transformer=transformer, text_encoder=transformers.Qwen3ForCausalLM(qwen3_config(27)),
        tokenizer=qwen3_tokenizer(), is_distilled=distilled,
    ).save_pretrained(folder / "model")
    return folder / "model"


def as_klein_base(klein: Path, folder: Path) -> Path:
    """A copy of the Klein folder ``klein`` in ``folder/model``, as a non-distilled (guided) Klein."""
    copy = Path(shutil.copytree(klein, folder / "model"))
    index = json.loads((copy / "model_index.json").read_text())
    (copy / "model_index.json").write_text(json.dumps(index | {"is_distilled": False}))
    return copy


# The chat template's special tokens (Qwen2's), after the 256 bytes.
QWEN2_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def qwen2_tokenizer() -> "transformers.Qwen2Tokenizer":
    """Qwen2's byte-level BPE with no merges: one token per byte (so the template's
    dropped first tokens are all the system prompt's), and the special tokens."""
    import transformers
    from tokenizers import AddedToken, pre_tokenizers

    vocab = {byte: i for i, byte in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens([AddedToken(token, special=True) for token in QWEN2_SPECIAL])
    return tokenizer


def qwen_encoder(tokenizer: "transformers.Qwen2Tokenizer") -> "transformers.Qwen2_5_VLForConditionalGeneration":
    """A two-layer Qwen2.5-VL of width 16 (diffusers' test sizes) over ``tokenizer``'s ids."""
    import transformers

    ids = dict(zip(QWEN2_SPECIAL, tokenizer.convert_tokens_to_ids(list(QWEN2_SPECIAL))))
    end = ids["<|endoftext|>"]
    config = transformers.Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"}, "rope_theta": 1e6,
            "vocab_size": len(tokenizer), "bos_token_id": end, "eos_token_id": end,
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        vocab_size=len(tokenizer), bos_token_id=end, eos_token_id=end, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    return transformers.Qwen2_5_VLForConditionalGeneration(config)


def qwen_parts(seed: int) -> dict:
    """The transformer (16 packed channels: the VAE's 4 times 2x2), the 3D VAE (factor 2,
    a per-channel mean and std), Qwen-Image's scheduler settings and the encoder."""
    import diffusers

    torch.manual_seed(seed)
    transformer = diffusers.QwenImageTransformer2DModel(
        patch_size=2, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4),
    )
    randomise_zeros(transformer)
    vae = diffusers.AutoencoderKLQwenImage(
        base_dim=24, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[1.5, 0.8, 1.2, 2.0],
    )
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9, base_image_seq_len=256, max_image_seq_len=8192,
        shift_terminal=0.02, time_shift_type="exponential",
    )
    tokenizer = qwen2_tokenizer()
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler, "tokenizer": tokenizer, "text_encoder": qwen_encoder(tokenizer)}


def save_tiny_qwen(folder: Path) -> Path:
    import diffusers

    diffusers.QwenImagePipeline(**qwen_parts(0)).save_pretrained(folder / "model")
    return folder / "model"


def save_tiny_qwen_edit(folder: Path) -> Path:
    """Qwen-Image-Edit: the parts of Qwen-Image and a Qwen2VLProcessor over its tokenizer."""
    import diffusers
    import transformers

    parts = qwen_parts(1)
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(), tokenizer=parts["tokenizer"],
        video_processor=transformers.Qwen2VLVideoProcessor(),
    )
    diffusers.QwenImageEditPipeline(**parts, processor=processor).save_pretrained(folder / "model")
    return folder / "model"


def wan_vae(z_dim: int, patch_size: int = 0) -> "diffusers.AutoencoderKLWan":
    """A tiny Wan VAE: 4 frames per latent frame, 8 pixels per latent pixel (with
    ``patch_size`` 2, TI2V-5B's: pixels patchified 2x2 first, 16, residual blocks), a
    random per-channel mean and std."""
    import diffusers

    g = torch.Generator().manual_seed(z_dim)
    ti2v = {"is_residual": True, "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_spatial": 16} if patch_size else {}
    return diffusers.AutoencoderKLWan(
        base_dim=4, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=(torch.randn(z_dim, generator=g) * 0.3).tolist(), latents_std=(torch.rand(z_dim, generator=g) + 0.5).tolist(),
        **ti2v,
    )


def wan_transformer(channels: int, seed: int) -> "diffusers.WanTransformer3DModel":
    """A one-layer Wan transformer of width 24 over a 16-wide text, 2x2 patches."""
    import diffusers

    torch.manual_seed(seed)
    transformer = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=channels, out_channels=channels,
        text_dim=16, freq_dim=16, ffn_dim=32, num_layers=1, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32,
    )
    randomise_zeros(transformer)
    return transformer


def save_tiny_wan(folder: Path, kind: str = "t2v") -> Path:
    """Wan: a tiny UMT5 (the pipeline pads its states to 512 tokens), the UniPC flow
    scheduler with flow_shift 3 (Wan's 480p setting). ``kind``: "t2v" (2.1, a 4-channel
    latent), "ti2v" (2.2 TI2V-5B: a 48-channel latent from 2x2-patchified pixels, a
    timestep per token) or "a14b" (2.2 A14B: two experts switched at boundary_ratio 0.875)."""
    import diffusers
    import transformers

    torch.manual_seed(0)
    encoder = transformers.UMT5EncoderModel(transformers.UMT5Config(
        vocab_size=16, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2, relative_attention_num_buckets=8,
    ))
    channels = 48 if kind == "ti2v" else 4
    scheduler = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    experts = {"transformer_2": wan_transformer(channels, 1), "boundary_ratio": 0.875} if kind == "a14b" else {}
    diffusers.WanPipeline(
        tokenizer=t5_tokenizer(), text_encoder=encoder, vae=wan_vae(channels, 2 if kind == "ti2v" else 0),
        transformer=wan_transformer(channels, 0), scheduler=scheduler, expand_timesteps=kind == "ti2v", **experts,
    ).save_pretrained(folder / "model")
    return folder / "model"


# Every family's folder by name: the builder of its tiny pipeline, given an empty folder.
BUILDERS = {
    "sd-eps": lambda folder: save_tiny_sd(folder, "epsilon"),
    "sd-v": lambda folder: save_tiny_sd(folder, "v_prediction"),
    "sd-inpaint": save_tiny_sd_inpainting,
    "sdxl-eps": lambda folder: save_tiny_sdxl(folder, "epsilon"),
    "sdxl-v": lambda folder: save_tiny_sdxl(folder, "v_prediction"),
    "sdxl-inpaint": lambda folder: save_tiny_sdxl(folder, "epsilon", in_channels=9),
    "sdxl-refiner": save_tiny_refiner,
    "sd3": lambda folder: save_tiny_flow(folder, "sd3"),
    "flux": lambda folder: save_tiny_flow(folder, "flux"),
    "flux-schnell": lambda folder: save_tiny_flow(folder, "flux", guidance=False),
    "flux-schnell-fixed": save_tiny_schnell_fixed,
    "flux-fill": save_tiny_flux_fill,
    "kontext": save_tiny_kontext,
    "chroma": save_tiny_chroma,
    "zimage-turbo": save_tiny_zimage,  # named Turbo: Turbo's defaults
    "klein": save_tiny_klein,
    "qwen": save_tiny_qwen,
    "qwen-edit": save_tiny_qwen_edit,
    "wan": save_tiny_wan,
    "wan-ti2v": lambda folder: save_tiny_wan(folder, "ti2v"),
    "wan-a14b": lambda folder: save_tiny_wan(folder, "a14b"),
}
