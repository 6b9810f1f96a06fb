"""The newer editing models through the one diffusers loader, on tiny random pipelines
saved to folders: each against diffusers' own pipeline with the map all ones and Euler,
to 1e-5 of the latent's largest value; kept pixels exact."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from conftest import flow_clip, flow_vae, halves, randomise_zeros, ramp_image, t5_tokenizer, tiny_t5, write_tokenizer

from kdiff_differential import load_pipeline
from kdiff_differential.edit import differential_edit

HEIGHT, WIDTH = 32, 36  # pixels; the tiny VAE's factor is 2, Flux packs 2x2


def flux_scheduler() -> diffusers.FlowMatchEulerDiscreteScheduler:
    return diffusers.FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )


def save_tiny_flux_fill(folder: Path) -> Path:
    """Flux.1 Fill: 16 packed latent channels, 16 of the masked latent, 4 * 2^2 of the mask."""
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


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return ramp_image(HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def fill(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_flux_fill(tmp_path_factory.mktemp("fill"))


def test_flux_fill_with_everything_released_is_the_diffusers_pipeline(fill: Path, image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """The inpainting input (the masked image's packed latent and the half mask at the
    VAE's factor, packed) as FluxFillPipeline builds it, with our wrapper releasing
    every pixel: the same latent as diffusers', on the model's own schedule. diffusers
    encodes the masked image with a sample of the VAE's posterior, we with its mode:
    it is told to take the mode too."""
    from PIL import Image
    from diffusers.pipelines.flux import pipeline_flux_fill

    retrieve = pipeline_flux_fill.retrieve_latents
    monkeypatch.setattr(pipeline_flux_fill, "retrieve_latents", lambda output, generator=None, sample_mode="sample": retrieve(output, sample_mode="argmax"))

    pipe = load_pipeline(fill)
    assert pipe.description == "FLUX.1 Fill, inpainting, flow matching"
    assert (pipe.schedule, pipe.steps, pipe.cfg) == ("model", 28, 30.0)
    latent = torch.zeros(1, 4, HEIGHT // 2, WIDTH // 2)  # all released: only its shape matters
    args = pipe.extra_args("a red cat", "", 3.0, image=image, change_map=halves(HEIGHT, WIDTH))
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(HEIGHT // 2, WIDTH // 2), sampler="euler", steps=3,
        schedule="model", extra_args=args, seed=5,
    )
    noise = edit.wrapper.noise
    reference = diffusers.FluxFillPipeline.from_pretrained(fill, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    mask = Image.fromarray((halves(HEIGHT, WIDTH).numpy() * 255).astype(np.uint8))
    out = reference(
        prompt="a red cat", image=Image.fromarray(image), mask_image=mask, height=HEIGHT, width=WIDTH,
        latents=diffusers.FluxPipeline._pack_latents(noise, 1, 4, HEIGHT // 2, WIDTH // 2), num_inference_steps=3,
        guidance_scale=3.0, max_sequence_length=16, output_type="latent",
    ).images
    expected = diffusers.FluxPipeline._unpack_latents(out, HEIGHT, WIDTH, reference.vae_scale_factor)
    assert (expected - noise).abs().mean() > 0.1  # the model moved the noise
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


def save_tiny_chroma(folder: Path) -> Path:
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


@pytest.fixture(scope="module")
def chroma(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_chroma(tmp_path_factory.mktemp("chroma"))


def test_chroma_with_everything_released_is_the_diffusers_pipeline(chroma: Path) -> None:
    """T5 with its attention mask (the first padding token kept), the mask beside the
    image tokens', guidance with the negative prompt: ChromaPipeline's latent."""
    folder = chroma
    pipe = load_pipeline(folder)
    assert pipe.description == "Chroma, text-to-image, flow matching"
    assert (pipe.schedule, pipe.steps, pipe.cfg) == ("model", 20, 5.0)
    latent = torch.zeros(1, 4, HEIGHT // 2, WIDTH // 2)
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(HEIGHT // 2, WIDTH // 2), sampler="euler", steps=3,
        schedule="model", extra_args=pipe.extra_args("a red cat", "blurry", 3.0), seed=5,
    )
    noise = edit.wrapper.noise
    reference = diffusers.ChromaPipeline.from_pretrained(folder, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    out = reference(
        prompt="a red cat", negative_prompt="blurry", height=HEIGHT, width=WIDTH, num_inference_steps=3, guidance_scale=3.0,
        latents=diffusers.FluxPipeline._pack_latents(noise, 1, 4, HEIGHT // 2, WIDTH // 2), max_sequence_length=16,
        output_type="latent",
    ).images
    expected = diffusers.FluxPipeline._unpack_latents(out, HEIGHT, WIDTH, reference.vae_scale_factor)
    assert (expected - noise).abs().mean() > 0.1
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.fixture(scope="module")
def kontext(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("kontext")
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


def test_flux_kontext_with_everything_released_is_the_diffusers_pipeline(kontext: Path, image: np.ndarray) -> None:
    """The input image's tokens beside the output latent's (position ids (1, row, col)),
    the prediction taken on the output tokens: FluxKontextPipeline's latent; without the
    reference image, one line."""
    from PIL import Image

    from kdiff_differential.errors import InputError

    pipe = load_pipeline(kontext)
    assert pipe.description == "FLUX.1 Kontext, text-to-image, flow matching"
    with pytest.raises(InputError, match="FLUX.1 Kontext edits from a reference image"):
        pipe.extra_args("a red cat")
    latent = torch.zeros(1, 4, HEIGHT // 2, WIDTH // 2)
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(HEIGHT // 2, WIDTH // 2), sampler="euler", steps=3,
        schedule="model", extra_args=pipe.extra_args("a red cat", "", 3.0, image=image), seed=5,
    )
    noise = edit.wrapper.noise
    reference = diffusers.FluxKontextPipeline.from_pretrained(kontext, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    out = reference(
        image=Image.fromarray(image), prompt="a red cat", height=HEIGHT, width=WIDTH, max_area=HEIGHT * WIDTH,
        _auto_resize=False, latents=diffusers.FluxPipeline._pack_latents(noise, 1, 4, HEIGHT // 2, WIDTH // 2),
        num_inference_steps=3, guidance_scale=3.0, max_sequence_length=16, output_type="latent",
    ).images
    expected = diffusers.FluxPipeline._unpack_latents(out, HEIGHT, WIDTH, reference.vae_scale_factor)
    assert (expected - noise).abs().mean() > 0.1
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


FOLDERS = ("fill", "kontext", "chroma")


@pytest.fixture(scope="module", params=FOLDERS)
def folder(request: pytest.FixtureRequest) -> Path:
    return request.getfixturevalue(request.param)


def test_every_sampler_keeps_kept_pixels_and_changes_the_rest(folder: Path, image: np.ndarray) -> None:
    """Every k-diffusion sampler on one of the families (each family a third of them:
    the sampler's steps are the same for all, the model call is each family's own),
    2 steps; FLUX.1 Fill with the released mask."""
    from conftest import SAMPLERS, check_samplers_keep_the_kept_half

    pipe = load_pipeline(folder)
    options = {"inpaint_mask": "released"} if pipe.inpainting else {}
    args = pipe.extra_args("a cat", "", 1.0 if pipe.family.guided else None, image=image, change_map=halves(HEIGHT, WIDTH), **options)
    family = FOLDERS.index(folder.parent.name.rstrip("0123456789"))
    check_samplers_keep_the_kept_half(pipe, image, args, SAMPLERS[family :: len(FOLDERS)])


@pytest.mark.slow
def test_the_command_line_runs_flux_fill_and_keeps_kept_pixels_byte_exact(fill: Path, image: np.ndarray, tmp_path: Path) -> None:
    from conftest import edit_halves_on_the_command_line

    done = edit_halves_on_the_command_line(fill, image, tmp_path, "--inpaint-mask", "released")
    assert "model: FLUX.1 Fill, inpainting, flow matching" in done.stderr
