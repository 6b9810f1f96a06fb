"""Qwen-Image and Qwen-Image-Edit through the one diffusers loader, on tiny random
pipelines saved to folders (a byte-level Qwen2 tokenizer and its VL processor made
here): each against diffusers' own pipeline with the map all ones and Euler, to 1e-5
of the latent's largest value; kept pixels exact with every sampler."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
import transformers

from conftest import halves, randomise_zeros, ramp_image

from kdiff_differential import load_pipeline
from kdiff_differential.edit import differential_edit

HEIGHT, WIDTH = 32, 36  # pixels; the tiny VAE's factor is 2, the transformer packs 2x2
# The chat template's special tokens (Qwen2's), after the 256 bytes.
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def qwen_tokenizer() -> "transformers.Qwen2Tokenizer":
    """Qwen2's byte-level BPE with no merges: one token per byte (so the template's
    dropped first tokens are all the system prompt's), and the special tokens."""
    from tokenizers import AddedToken, pre_tokenizers

    vocab = {byte: i for i, byte in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = transformers.Qwen2Tokenizer(vocab=vocab, merges=[])
    tokenizer.add_tokens([AddedToken(token, special=True) for token in SPECIAL])
    return tokenizer


def qwen_encoder(tokenizer: "transformers.Qwen2Tokenizer") -> "transformers.Qwen2_5_VLForConditionalGeneration":
    """A two-layer Qwen2.5-VL of width 16 (diffusers' test sizes) over ``tokenizer``'s ids."""
    ids = dict(zip(SPECIAL, tokenizer.convert_tokens_to_ids(list(SPECIAL))))
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
    tokenizer = qwen_tokenizer()
    return {"transformer": transformer, "vae": vae, "scheduler": scheduler, "tokenizer": tokenizer, "text_encoder": qwen_encoder(tokenizer)}


def pack(latent: torch.Tensor) -> torch.Tensor:
    return diffusers.QwenImagePipeline._pack_latents(latent, 1, latent.shape[1], *latent.shape[-2:])


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    """diffusers' packed output -> (1, C, h, w), the frame axis dropped."""
    return diffusers.QwenImagePipeline._unpack_latents(tokens, HEIGHT, WIDTH, 2)[:, :, 0]


def released_and_diffusers(pipe, kind: type, folder: Path, args: dict, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Our latent with every pixel released (Euler, 3 steps on the model's schedule;
    the zero latent gives only the shape) and diffusers' pipeline ``kind`` from the same
    noise, prompts and true guidance scale (3) with ``settings``: (ours, theirs)."""
    latent = torch.zeros(1, 4, HEIGHT // 2, WIDTH // 2)
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(HEIGHT // 2, WIDTH // 2), sampler="euler", steps=3,
        schedule="model", extra_args=args, seed=5,
    )
    noise = edit.wrapper.noise
    reference = kind.from_pretrained(folder, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    out = reference(
        prompt="a red cat", negative_prompt="blurry", true_cfg_scale=3.0, height=HEIGHT, width=WIDTH, num_inference_steps=3,
        latents=pack(noise), output_type="latent", **settings,
    ).images
    expected = unpack(out)
    assert (expected - noise).abs().mean() > 0.1  # the model moved the noise
    return edit.result, expected


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return ramp_image(HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("qwen") / "model"
    diffusers.QwenImagePipeline(**qwen_parts(0)).save_pretrained(folder)
    return folder


def test_qwen_image_with_everything_released_is_the_diffusers_pipeline(qwen: Path) -> None:
    """The template's tokens dropped, true guidance with the negative prompt and the
    guided velocity rescaled to the prompt's norm, the schedule's dynamic shift and
    terminal stretch: QwenImagePipeline's latent, normalised as its VAE's config says."""
    pipe = load_pipeline(qwen)
    assert pipe.description == "Qwen-Image, text-to-image, flow matching"
    assert (pipe.schedule, pipe.steps, pipe.cfg) == ("model", 50, 4.0)
    ours, theirs = released_and_diffusers(pipe, diffusers.QwenImagePipeline, qwen, pipe.extra_args("a red cat", "blurry", 3.0))
    assert (ours - theirs).abs().max() < 1e-5 * theirs.abs().max()


def test_a_single_transformer_file_loads_as_qwen_image_with_its_folder_as_config(qwen: Path, tmp_path: Path, offline_cache: Path) -> None:
    """The transformer alone in one .safetensors file (diffusers' names, as ComfyUI's
    split files have them; its output bias changed, to tell it from the folder's), the
    other parts from --config: the file's weights in the family's pipeline. Without
    --config, offline, one line naming the default configuration, Qwen/Qwen-Image."""
    from safetensors.torch import save_file

    from kdiff_differential.errors import InputError

    weights = diffusers.QwenImageTransformer2DModel.from_pretrained(qwen / "transformer").state_dict()
    weights["proj_out.bias"] = weights["proj_out.bias"] + 0.5
    save_file(weights, str(tmp_path / "qwen.safetensors"))
    with pytest.raises(InputError, match="this Qwen-Image checkpoint: the default, Qwen/Qwen-Image, is not in the Hub cache"):
        load_pipeline(tmp_path / "qwen.safetensors")
    pipe = load_pipeline(tmp_path / "qwen.safetensors", config=qwen)
    assert pipe.description == "Qwen-Image, text-to-image, flow matching"
    loaded = pipe.network.state_dict()
    assert loaded.keys() == weights.keys() and all(torch.equal(loaded[key], weights[key]) for key in weights)


@pytest.mark.parametrize("steps", [2, 5, 50])
def test_the_model_schedule_is_the_scheduler_s_with_its_terminal_stretch(steps: int) -> None:
    """Qwen-Image's schedule (dynamic shift, stretched to end at t = 0.02) in sigma: the
    flow times diffusers' scheduler sets for the pipeline's linspace(1, 1/n, n)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    from kdiff_differential.models.flow import FlowDenoiser

    config = dict(qwen_parts(0)["scheduler"].config)
    tokens = 4096
    ours = FlowDenoiser.from_scheduler_config(lambda x, t: x, config, tokens).get_sigmas(steps)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"], config["base_shift"], config["max_shift"])
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert scheduler.sigmas[-2] == pytest.approx(0.02, rel=1e-6)
    torch.testing.assert_close(FlowDenoiser.sigma_to_t(ours).float(), scheduler.sigmas, rtol=1e-6, atol=0)


@pytest.fixture(scope="module")
def edit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen-Image-Edit: the parts of Qwen-Image and a Qwen2VLProcessor over its tokenizer."""
    folder = tmp_path_factory.mktemp("edit") / "model"
    parts = qwen_parts(1)
    processor = transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(), tokenizer=parts["tokenizer"], video_processor=transformers.Qwen2VLVideoProcessor(),
    )
    diffusers.QwenImageEditPipeline(**parts, processor=processor).save_pretrained(folder)
    return folder


def test_qwen_image_edit_with_everything_released_is_the_diffusers_pipeline(edit: Path, image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """The input image's latent tokens after the output latent's (a second image to the
    positions), the prediction taken on the output tokens, the prompt read with the
    image by the VL encoder: QwenImageEditPipeline's latent; without the reference
    image, one line. diffusers resizes the reference to about 1 MP; it is told to keep
    the edit's size, as ours does."""
    from PIL import Image
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit

    from kdiff_differential.errors import InputError

    monkeypatch.setattr(pipeline_qwenimage_edit, "calculate_dimensions", lambda area, ratio: (WIDTH, HEIGHT, None))
    pipe = load_pipeline(edit)
    assert pipe.description == "Qwen-Image-Edit, text-to-image, flow matching"
    assert (pipe.schedule, pipe.steps, pipe.cfg) == ("model", 50, 4.0)
    with pytest.raises(InputError, match=r"Qwen-Image-Edit edits from a reference image: give the input image \(image=\)"):
        pipe.extra_args("a red cat")
    args = pipe.extra_args("a red cat", "blurry", 3.0, image=image)
    ours, theirs = released_and_diffusers(pipe, diffusers.QwenImageEditPipeline, edit, args, image=Image.fromarray(image))
    assert (ours - theirs).abs().max() < 1e-5 * theirs.abs().max()


FOLDERS = ("qwen", "edit")


@pytest.fixture(scope="module", params=FOLDERS)
def folder(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_every_sampler_keeps_kept_pixels_and_changes_the_rest(folder: Path, image: np.ndarray) -> None:
    """Every k-diffusion sampler on one of the families (each family a share of them:
    the sampler's steps are the same for all, the model call is each family's own),
    2 steps, the prompt alone (the guided call is checked above; with it, dpm_adaptive
    takes ten times the steps on these random weights)."""
    from conftest import SAMPLERS, check_samplers_keep_the_kept_half

    pipe = load_pipeline(folder)
    family = FOLDERS.index(folder.parent.name.rstrip("0123456789"))
    check_samplers_keep_the_kept_half(pipe, image, pipe.extra_args("a cat", "", 1.0, image=image), SAMPLERS[family :: len(FOLDERS)])


@pytest.mark.slow
def test_the_command_line_runs_each_family_and_keeps_kept_pixels_byte_exact(folder: Path, image: np.ndarray, tmp_path: Path) -> None:
    """Qwen-Image-Edit takes the input image as its reference."""
    from conftest import edit_halves_on_the_command_line

    done = edit_halves_on_the_command_line(folder, image, tmp_path, "--prompt", "a red cat")
    name = {"qwen": "Qwen-Image", "edit": "Qwen-Image-Edit"}[folder.parent.name.rstrip("0123456789")]
    assert f"model: {name}, text-to-image, flow matching" in done.stderr
