"""SDXL and inpainting checkpoints through the one diffusers loader, on tiny random
pipelines saved to a temp folder (tokenizers written here, nothing from a hub); the CFG
batch of dict conditions; refused folders; the missing-extra message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import kdiff, pixels, diffusers_euler, halves, ramp_image, save_tiny_sd_inpainting, save_tiny_sdxl, tiny_clip, tiny_vae, write_tokenizer

from kdiff_differential import load_pipeline
from kdiff_differential.cli import main
from kdiff_differential.edit import differential_edit
from kdiff_differential.guidance import CFGDenoiser

HEIGHT, WIDTH = 24, 32  # pixels; the tiny VAEs' factor is 2


def save_tiny_refiner(folder: Path) -> Path:
    """A tiny SDXL refiner: the second encoder alone (width 24 = crossattn, pooled 16),
    time ids (H, W, top, left, aesthetic score): projection 16 + 5 * 8 = 56; the negative
    prompt is encoded, not zeroed, as in the published refiner's folder."""
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


FOLDERS = {
    "sdxl-eps": lambda folder: save_tiny_sdxl(folder, "epsilon"),
    "sdxl-v": lambda folder: save_tiny_sdxl(folder, "v_prediction"),
    "sdxl-inpaint": lambda folder: save_tiny_sdxl(folder, "epsilon", in_channels=9),
    "sd-inpaint": save_tiny_sd_inpainting,
    "sdxl-refiner": save_tiny_refiner,
}


@pytest.fixture(scope="module", params=list(FOLDERS))
def folder(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return FOLDERS[request.param](tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return ramp_image(HEIGHT, WIDTH)


def test_conditioning_has_the_shapes_the_unet_config_demands(folder: Path, image: np.ndarray) -> None:
    pipe = load_pipeline(folder)
    config = pipe.denoiser.inner_model.inner_model.unet.config
    args = pipe.extra_args("a red cat", "", 5.0, image=image, change_map=halves(HEIGHT, WIDTH))
    cond, uncond = args["cond"], args["uncond"]
    assert cond.keys() == uncond.keys()
    assert cond["crossattn"].shape == (1, 16, config.cross_attention_dim)
    if config.addition_embed_type == "text_time" and "refiner" in folder.parent.name:
        assert pipe.family.name == "Stable Diffusion XL refiner"
        assert cond["text_embeds"].shape[-1] + 5 * config.addition_time_embed_dim == config.projection_class_embeddings_input_dim
        # The aesthetic score of the prompt and of the negative, as diffusers' defaults.
        assert cond["time_ids"].tolist() == [[HEIGHT, WIDTH, 0, 0, 6.0]] and uncond["time_ids"].tolist() == [[HEIGHT, WIDTH, 0, 0, 2.5]]
        assert uncond["crossattn"].any()  # force_zeros_for_empty_prompt is off: "" is encoded
    elif config.addition_embed_type == "text_time":
        assert pipe.family.name == "Stable Diffusion XL"
        assert cond["text_embeds"].shape[-1] + 6 * config.addition_time_embed_dim == config.projection_class_embeddings_input_dim
        assert cond["time_ids"].tolist() == [[HEIGHT, WIDTH, 0, 0, HEIGHT, WIDTH]]
        # force_zeros_for_empty_prompt (diffusers' default) and no negative: all zeros.
        assert not uncond["crossattn"].any() and not uncond["text_embeds"].any()
    if config.in_channels == 9:
        assert pipe.inpainting
        mask, masked = cond["concat"][:, :1], cond["concat"][:, 1:]
        assert cond["concat"].shape == (1, 5, HEIGHT // 2, WIDTH // 2)
        torch.testing.assert_close(mask[0, 0], halves(HEIGHT // 2, WIDTH // 2))
        from kdiff_differential.images import to_tensor

        # The pixels to change set to 0 in [-1, 1]: mid-grey.
        expected = pipe.encode(to_tensor(image) * (1 - halves(HEIGHT, WIDTH)))
        torch.testing.assert_close(masked, expected)
    else:
        assert "concat" not in cond and not pipe.inpainting


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m", "heun"])
def test_kept_latent_pixels_are_exact_and_changed_ones_change(folder: Path, image: np.ndarray, sampler: str) -> None:
    pipe = load_pipeline(folder)
    latent = pipe.encode(image)
    change = halves(*latent.shape[-2:])
    args = pipe.extra_args("a cat", "blurry", 4.0, image=image, change_map=halves(HEIGHT, WIDTH))
    edit = differential_edit(pipe.denoiser, latent, change, sampler=sampler, steps=3, extra_args=args)
    half = latent.shape[-1] // 2
    torch.testing.assert_close(edit.result[..., :half], latent[..., :half], atol=1e-5, rtol=0)
    assert (edit.result[..., half:] - latent[..., half:]).abs().mean() > 0.05
    assert pipe.decode(edit.result).shape == (1, 3, HEIGHT, WIDTH)


@pytest.mark.parametrize("folder", ["sdxl-eps", "sdxl-v"], indirect=True)
@pytest.mark.parametrize("negative", ["", "blurry"], ids=["no-negative", "negative"])
def test_euler_with_everything_released_is_the_diffusers_pipeline(folder: Path, negative: str) -> None:
    """End to end against diffusers' own StableDiffusionXLPipeline with Euler on Karras
    sigmas (output latents, same initial noise, same steps): both encoders' penultimate
    states, the pooled projection, the time ids of a non-square size, the negative prompt
    (or, without one, the zeros of force_zeros_for_empty_prompt) and the prediction type
    agree with diffusers', to float32 rounding."""
    pipe = load_pipeline(folder)
    h, w = HEIGHT // 2, WIDTH // 2
    latent = torch.zeros(1, 4, h, w)  # all released: only its shape matters
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(h, w), sampler="euler", steps=4,
        extra_args=pipe.extra_args("a red cat", negative, 3.0, size=(HEIGHT, WIDTH)), seed=5,
    )
    # diffusers zeroes the negative only when none is given (an explicit "" it encodes);
    # ours takes "" for none.
    expected = diffusers_euler(
        diffusers.StableDiffusionXLPipeline, folder, edit, prompt="a red cat", negative_prompt=negative or None,
        height=HEIGHT, width=WIDTH, guidance_scale=3.0,
    )
    noise = edit.wrapper.noise
    # The model moved the start (noise * sigma_max) and did not land on the unit noise:
    # the comparison is not of two copies of either.
    assert (expected - noise * edit.wrapper.sigmas[0]).abs().mean() > 0.1 and (expected - noise).abs().mean() > 0.1
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.mark.parametrize("folder", ["sdxl-refiner"], indirect=True)
def test_the_refiner_with_everything_released_is_the_diffusers_img2img_pipeline(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end against diffusers' StableDiffusionXLImg2ImgPipeline at strength 1 on our
    latent, with our noise (its own draw replaced), Euler on Karras sigmas: the second
    encoder alone, the aesthetic-score time ids of prompt and negative, to float32 rounding."""
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as img2img

    pipe = load_pipeline(folder)
    h, w = HEIGHT // 2, WIDTH // 2
    latent = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(1))
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(h, w), sampler="euler", steps=4,
        extra_args=pipe.extra_args("a red cat", "blurry", 3.0, size=(HEIGHT, WIDTH)), seed=5,
    )
    monkeypatch.setattr(img2img, "randn_tensor", lambda shape, **_: edit.wrapper.noise.reshape(shape).clone())
    reference = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(folder, local_files_only=True)
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        reference.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace",
    )
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        prompt="a red cat", negative_prompt="blurry", image=latent, strength=1.0, num_inference_steps=4,
        guidance_scale=3.0, output_type="latent",
    ).images
    torch.testing.assert_close(edit.wrapper.sigmas, reference.scheduler.sigmas, rtol=1e-6, atol=0)
    assert (expected - latent).abs().mean() > 0.1  # the model moved the picture
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


def test_the_readme_base_then_refiner_recipe_keeps_kept_pixels(tmp_path: Path, image: np.ndarray) -> None:
    """The README's split: SDXL base for the first steps, the refiner for the rest, one
    schedule, map and noise. Kept pixels end exact; the refiner's steps change the rest."""
    import k_diffusion as K

    from kdiff_differential import DifferentialDenoiser
    from kdiff_differential.edit import make_sigmas

    base = load_pipeline(save_tiny_sdxl(tmp_path / "base", "epsilon"))
    refiner = load_pipeline(save_tiny_refiner(tmp_path / "refiner"))
    latent = base.encode(image)
    change = halves(*latent.shape[-2:])
    sigmas = make_sigmas(base.denoiser_for(latent), 5)
    split = 3
    first = DifferentialDenoiser(base.denoiser_for(latent), latent, change, sigmas=sigmas,
                                 generator=torch.Generator().manual_seed(0))
    x = K.sampling.sample_dpmpp_2m(first, first.noisy_latent(), first.sigmas[: split + 1],
                                   extra_args=base.extra_args("a red cat", "blurry", image=image), disable=True)
    second = DifferentialDenoiser(refiner.denoiser_for(latent), latent, change, sigmas=sigmas, noise=first.noise)
    refined = K.sampling.sample_dpmpp_2m(second, x, second.sigmas[split:],
                                         extra_args=refiner.extra_args("a red cat", "blurry", image=image), disable=True)
    base_only = K.sampling.sample_dpmpp_2m(first, x, first.sigmas[split:],
                                           extra_args=base.extra_args("a red cat", "blurry", image=image), disable=True)
    half = latent.shape[-1] // 2
    torch.testing.assert_close(refined[..., :half], latent[..., :half], atol=1e-5, rtol=0)
    assert (refined[..., half:] - base_only[..., half:]).abs().mean() > 1e-3
    assert refiner.decode(refined).shape == (1, 3, HEIGHT, WIDTH)


def test_cfg_batches_dict_conditions_key_by_key() -> None:
    seen = {}

    def inner(x, sigma, cond):
        seen.update(cond)
        return x * cond["scale"].view(-1, 1, 1, 1)

    guided = CFGDenoiser(inner)  # type: ignore[arg-type]
    x = torch.ones(1, 2, 3, 3)
    cond = {"scale": torch.tensor([3.0]), "extra": torch.zeros(1, 5)}
    uncond = {"scale": torch.tensor([1.0]), "extra": torch.ones(1, 5)}
    out = guided(x, torch.ones(1), cond=cond, uncond=uncond, cfg_scale=2.0)
    assert seen["scale"].tolist() == [1.0, 3.0] and seen["extra"].shape == (2, 5)
    assert seen["extra"][0].eq(1).all() and seen["extra"][1].eq(0).all()  # uncond first, as the tensor path
    torch.testing.assert_close(out, x * (1 + 2 * (3 - 1)))
    with pytest.raises(ValueError, match="same keys"):
        guided(x, torch.ones(1), cond=cond, uncond={"scale": uncond["scale"]}, cfg_scale=2.0)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler"])
def test_the_command_line_runs_the_folder(folder: Path, image: np.ndarray, tmp_path: Path, sampler: str) -> None:
    Image.fromarray(image).save(tmp_path / "in.png")
    done = kdiff(
        "--model", str(folder), "--image", "in.png", "--map", "gradient-x", "--prompt", "a red cat",
        "--cfg", "5", "--sampler", sampler, "--steps", "2", "--out", "out.png", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert pixels(tmp_path / "out.png").shape == (HEIGHT, WIDTH, 3)
    family = "Stable Diffusion XL" if "sdxl" in folder.parent.name else "Stable Diffusion 1.x/2.x"
    family += " refiner" if "refiner" in folder.parent.name else ""
    kind = "inpainting" if "inpaint" in folder.parent.name else "text-to-image"
    assert f"model: {family}, {kind}" in done.stderr


def refused(folder: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> str:
    status = main(["--model", str(folder), "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()
    return err


@pytest.mark.parametrize(
    "index, says",
    [
        (None, "no model_index.json"),
        ({"_class_name": "FluxPipeline"}, "a Flux.1 folder without transformer, vae, scheduler, tokenizer, text_encoder, tokenizer_2, text_encoder_2/"),
        ({"_class_name": "StableDiffusion3Pipeline"}, "a Stable Diffusion 3/3.5 folder without transformer, vae, scheduler, tokenizer, text_encoder, tokenizer_2, text_encoder_2/"),
        ({"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
         "a Stable Diffusion XL refiner folder without unet, vae, scheduler, tokenizer_2, text_encoder_2/"),
        ({"_class_name": "KandinskyPipeline"}, "a KandinskyPipeline folder, which is not supported"),
        ({"_class_name": "StableDiffusionXLPipeline"}, "a Stable Diffusion XL folder without unet, vae, scheduler"),
    ],
)
def test_bad_folders_are_refused_in_one_line(index, says: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    if index is not None:
        (folder / "model_index.json").write_text(json.dumps(index))
    err = refused(folder, capsys, tmp_path)
    assert says in err
    if "not supported" in says:  # a refused kind: names every family of the registry
        from kdiff_differential.models.families import FAMILIES

        assert "supported: " in err and all(family.name in err for family in FAMILIES)


def test_without_diffusers_the_command_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    block = "import sys; sys.modules['diffusers'] = None; from kdiff_differential.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", block, "--model", "model", "--out", "x.png"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "pip install 'kdiff-differential[diffusers]'" in done.stderr


def test_the_sdxl_speed_script_measures_a_tiny_unet_on_cpu() -> None:
    from samplers.sdxl_speed import measure

    result = measure("cpu", size=32, steps=2, rounds=1, tiny=True)
    assert result["unet"] == "tiny" and result["s_per_step_bare"] > 0 and result["s_per_step_wrapped"] > 0
    assert result["ratio"] == result["s_per_step_wrapped"] / result["s_per_step_bare"]
