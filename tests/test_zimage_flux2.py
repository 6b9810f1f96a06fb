"""Z-Image and FLUX.2 Klein through the one diffusers loader, on tiny random pipelines
saved to folders (Qwen3 text encoders, a byte-level BPE tokenizer with a chat template
made here): each against diffusers' own pipeline with the map all ones and Euler, to
1e-5 of the latent's largest value; every sampler keeps the kept pixels exact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import SAMPLERS, flow_vae, halves, kdiff, pixels, randomise_zeros, ramp_image

from kdiff_differential import load_pipeline
from kdiff_differential.edit import differential_edit

HEIGHT, WIDTH = 32, 36  # pixels: Z-Image's latent 16 x 18 (VAE factor 2), FLUX.2's 8 x 9 (and 2x2 patches)
IMAGE = ramp_image(HEIGHT, WIDTH)
LENGTH = 64  # text tokens: the tokenizer's model_max_length, and the pipelines' max_sequence_length
# Qwen3's chat template, its parts that the pipelines use: the user's turn, the assistant's, thinking on or off.
CHAT = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def qwen_tokenizer() -> "transformers.PreTrainedTokenizerBase":
    """A byte-level BPE tokenizer shaped like Qwen's (every byte a token, no merges), with
    its special tokens and :data:`CHAT` as its chat template."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    bytes_ = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokenizer = Tokenizer(models.BPE({byte: i for i, byte in enumerate(bytes_)}, []))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    words = transformers.Qwen2TokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>", model_max_length=LENGTH)
    words.chat_template = CHAT
    return words


def qwen3_config(layers: int) -> "transformers.Qwen3Config":
    import transformers

    return transformers.Qwen3Config(
        vocab_size=300, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=2 * LENGTH,
    )


def save_tiny_zimage(folder: Path) -> Path:
    """Z-Image with a fixed-shift scheduler (as Turbo's): a 4-channel latent, a one-layer
    transformer, a two-layer Qwen3 (the pipeline reads its second-to-last hidden state)."""
    import transformers

    torch.manual_seed(0)
    transformer = diffusers.ZImageTransformer2DModel(
        in_channels=4, dim=32, n_layers=1, n_refiner_layers=1, n_heads=2, n_kv_heads=2, cap_feat_dim=16,
        axes_dims=[4, 6, 6], axes_lens=[256, 64, 64],
    )
    randomise_zeros(transformer)
    diffusers.ZImagePipeline(
        scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), vae=flow_vae(), transformer=transformer,
        text_encoder=transformers.Qwen3Model(qwen3_config(2)), tokenizer=qwen_tokenizer(),
    ).save_pretrained(folder / "model")
    return folder / "model"


def save_tiny_klein(folder: Path, distilled: bool) -> Path:
    """FLUX.2 Klein: a 4-channel VAE (16 channels patchified) with random batch-norm
    statistics, a Qwen3 with the 27 layers whose hidden states the pipeline reads, and
    FLUX.2's scheduler config (shifting with the resolution)."""
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
        tokenizer=qwen_tokenizer(), is_distilled=distilled,
    ).save_pretrained(folder / "model")
    return folder / "model"


@pytest.fixture(scope="module")
def zimage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_zimage(tmp_path_factory.mktemp("zimage-turbo"))


@pytest.fixture(scope="module")
def klein(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_klein(tmp_path_factory.mktemp("klein"), distilled=True)


@pytest.fixture(scope="module")
def klein_base(klein: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same weights, as a non-distilled Klein (guided)."""
    folder = shutil.copytree(klein, tmp_path_factory.mktemp("klein-base") / "model")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"is_distilled": False}))
    return folder


def edit_everything(pipe, latent: torch.Tensor, args: dict, steps: int = 3):
    """Our Euler run on the model's schedule with every pixel released, from seed 5."""
    return differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(latent.shape[-2:]), sampler="euler", steps=steps, schedule="model",
        extra_args=args, seed=5,
    )


def test_zimage_with_everything_released_is_the_diffusers_pipeline(zimage: Path) -> None:
    """Qwen3's chat-templated prompt (second-to-last layer, real tokens only), the
    transformer's reversed clock and negated prediction, guidance with the negative
    prompt (ZImagePipeline's guidance_scale 2 is our cfg 3), the shifted linspace(1, 1/n)
    schedule: ZImagePipeline's latent. A Turbo folder runs 8 steps without guidance."""
    pipe = load_pipeline(zimage)
    assert pipe.description == "Z-Image, text-to-image, flow matching"
    assert (pipe.schedule, pipe.steps, pipe.cfg) == ("model", 8, 1.0)
    edit = edit_everything(pipe, torch.zeros(1, 4, HEIGHT // 2, WIDTH // 2), pipe.extra_args("a red cat", "blurry", 3.0))
    noise = edit.wrapper.noise
    reference = diffusers.ZImagePipeline.from_pretrained(zimage, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        prompt="a red cat", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_inference_steps=3, guidance_scale=2.0,
        latents=noise, max_sequence_length=LENGTH, output_type="latent",
    ).images
    assert (expected - noise).abs().mean() > 0.1  # the model moved the noise
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


def test_zimage_base_defaults_are_its_pipelines(zimage: Path) -> None:
    """A Z-Image folder not named Turbo runs ZImagePipeline's defaults: 50 steps,
    guidance_scale 5 (our cfg 6)."""
    from kdiff_differential.models.families import ZImage

    config = diffusers.ZImageTransformer2DModel.load_config(zimage / "transformer")
    family = ZImage("models/Z-Image", {"_class_name": "ZImagePipeline"}, config, {}, torch.device("cpu"))
    assert family.defaults() == ("model", 50, 6.0)


def klein_reference(folder: Path, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
    """Flux2KleinPipeline's output latent from ``noise`` (our latent: patchified and
    normalised), brought back into that space; diffusers returns the VAE's latent."""
    reference = diffusers.Flux2KleinPipeline.from_pretrained(folder, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    raw = reference(
        prompt="a red cat", height=HEIGHT, width=WIDTH, num_inference_steps=steps, guidance_scale=guidance, latents=noise,
        max_sequence_length=LENGTH, output_type="latent",
    ).images
    bn = reference.vae.bn
    return (F.pixel_unshuffle(raw, 2) - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)


def test_flux2_klein_with_everything_released_is_the_diffusers_pipeline(klein: Path, klein_base: Path) -> None:
    """Qwen3's layers 9, 18 and 27 side by side, 4-axis position ids, FLUX.2's step-
    dependent shift, the latent patchified and normalised by the VAE's statistics:
    Flux2KleinPipeline's latent. Distilled: 4 steps, one pass, any cfg ignored (as
    there); the base: guidance with the empty negative prompt, as there."""
    latent = torch.zeros(1, 16, HEIGHT // 4, WIDTH // 4)
    for folder, cfg, steps, defaults in ((klein, 5.0, 4, ("model", 4, 1.0)), (klein_base, 3.0, 3, ("model", 50, 4.0))):
        pipe = load_pipeline(folder)
        assert pipe.description == "FLUX.2 Klein, text-to-image, flow matching"
        assert (pipe.schedule, pipe.steps, pipe.cfg) == defaults
        assert pipe.encode(IMAGE).shape == latent.shape
        edit = edit_everything(pipe, latent, pipe.extra_args("a red cat", "", cfg), steps)
        noise = edit.wrapper.noise
        expected = klein_reference(folder, noise, steps, cfg)
        assert (expected - noise).abs().mean() > 0.1
        assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max(), folder


def test_flux2_latent_codec_inverts_the_vae_normalisation(klein: Path) -> None:
    """Encoding is the posterior's mode patchified 2x2 and normalised by the VAE's running
    statistics (Flux2KleinPipeline's reference-image latent); decoding undoes both."""
    pipe = load_pipeline(klein)
    latent = pipe.encode(IMAGE)
    reference = diffusers.Flux2KleinPipeline.from_pretrained(klein, local_files_only=True)
    pixels_ = torch.from_numpy(IMAGE).permute(2, 0, 1)[None].float() / 127.5 - 1
    torch.testing.assert_close(latent, reference._encode_vae_image(pixels_, None), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        raw = reference._unpatchify_latents(latent * torch.sqrt(reference.vae.bn.running_var.view(1, -1, 1, 1) + reference.vae.bn.eps) + reference.vae.bn.running_mean.view(1, -1, 1, 1))
        torch.testing.assert_close(pipe.decode(latent), reference.vae.decode(raw).sample.clamp(-1, 1), atol=1e-5, rtol=1e-5)


FOLDERS = ("zimage", "klein")


@pytest.mark.parametrize("family", FOLDERS)
def test_every_sampler_keeps_kept_pixels_and_changes_the_rest(family: str, request: pytest.FixtureRequest) -> None:
    """Every k-diffusion sampler on each family (its share of them), 2 steps."""
    pipe = load_pipeline(request.getfixturevalue(family))
    latent = pipe.encode(IMAGE)
    args = pipe.extra_args("a cat", "")
    half = latent.shape[-1] // 2
    for sampler in SAMPLERS[FOLDERS.index(family) :: len(FOLDERS)]:
        edit = differential_edit(
            pipe.denoiser_for(latent), latent, halves(*latent.shape[-2:]), sampler=sampler,
            steps=None if sampler == "dpm_adaptive" else 2, schedule="model", extra_args=args,
        )
        torch.testing.assert_close(edit.result[..., :half], latent[..., :half], atol=1e-5, rtol=0, msg=sampler)
        assert (edit.result[..., half:] - latent[..., half:]).abs().mean() > 0.05, sampler


@pytest.mark.slow
@pytest.mark.parametrize(("family", "line"), [("zimage", "Z-Image"), ("klein", "FLUX.2 Klein")])
def test_the_command_line_keeps_kept_pixels_byte_exact(family: str, line: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    from PIL import Image

    Image.fromarray(IMAGE).save(tmp_path / "in.png")
    Image.fromarray((halves(HEIGHT, WIDTH).numpy() * 255).astype(np.uint8)).save(tmp_path / "map.png")
    done = kdiff(
        "--model", str(request.getfixturevalue(family)), "--image", "in.png", "--map", "map.png", "--steps", "2",
        "--sampler", "dpmpp_2m", "--out", "out.png", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert f"model: {line}, text-to-image, flow matching" in done.stderr
    assert np.array_equal(pixels(tmp_path / "out.png")[:, : WIDTH // 2], IMAGE[:, : WIDTH // 2])


def test_single_files_zimage_loads_and_klein_is_refused(zimage: Path, klein: Path) -> None:
    """A Z-Image transformer file with its folder as --config is Z-Image (named Turbo, so
    Turbo's defaults), its weights the folder's; a Klein transformer file, whose tensors
    are named as FLUX.2 dev's, is refused in one line."""
    from kdiff_differential.errors import InputError

    single = load_pipeline(zimage / "transformer" / "diffusion_pytorch_model.safetensors", config=zimage)
    assert (single.description, single.steps) == ("Z-Image, text-to-image, flow matching", 8)
    folder = dict(load_pipeline(zimage).network.named_parameters())
    assert all(torch.equal(value, folder[name]) for name, value in single.network.named_parameters())
    with pytest.raises(InputError, match="no model family recognises"):
        load_pipeline(klein / "transformer" / "diffusion_pytorch_model.safetensors", config=klein)
