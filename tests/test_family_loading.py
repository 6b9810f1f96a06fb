"""Loading each model family: what the loader makes of a folder or a single file (the
family, its defaults, the denoiser's parametrisation, the latent codec, the text
conditioning, the schedule) and the errors that name a bad argument. The families'
tiny folders are ``tiny_family``'s; a test that changes a folder builds its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from conftest import halves, ramp_image, save_tiny_flow

from kdiff_differential import load_pipeline
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.core.guidance import CFGDenoiser


@pytest.fixture(scope="module")
def fitted(tiny_family, image_file: Path):
    """``fitted(name)``: the family's tiny folder loaded in-process as the command line
    loads it, fitted to the 31x37 ``image_file``."""
    from kdiff_differential.files.images import read_image
    from kdiff_differential.models import load_model

    return lambda name: load_model(str(tiny_family(name)), read_image(str(image_file)), torch.device("cpu"))


# Each family's description and defaults (schedule, steps, cfg), as its pipeline's.
NAMED = {
    "flux-schnell-fixed": (None, ("model", 4, None)),  # schnell on a fixed shift: the same 4 steps as FluxPipeline
    "flux-fill": ("FLUX.1 Fill, inpainting, flow matching", ("model", 28, 30.0)),
    "chroma": ("Chroma, text-to-image, flow matching", ("model", 20, 5.0)),
    "kontext": ("FLUX.1 Kontext, text-to-image, flow matching", None),
    "zimage-turbo": ("Z-Image, text-to-image, flow matching", ("model", 8, 1.0)),  # a Turbo folder: 8 steps without guidance
    "klein": ("FLUX.2 Klein, text-to-image, flow matching", ("model", 4, 1.0)),  # distilled: 4 steps, one pass
    "klein-base": ("FLUX.2 Klein, text-to-image, flow matching", ("model", 50, 4.0)),
    "qwen": ("Qwen-Image, text-to-image, flow matching", ("model", 50, 4.0)),
    "qwen-edit": ("Qwen-Image-Edit, text-to-image, flow matching", ("model", 50, 4.0)),
}


@pytest.mark.parametrize("name", list(NAMED))
def test_each_family_names_itself_and_takes_its_pipeline_s_defaults(name: str, tiny_family) -> None:
    description, defaults = NAMED[name]
    pipe = load_pipeline(tiny_family(name))
    if description is not None:
        assert pipe.description == description
    if defaults is not None:
        schedule, steps, cfg = defaults
        assert (pipe.schedule, pipe.steps) == (schedule, steps)
        if cfg is not None:
            assert pipe.cfg == cfg


@pytest.mark.parametrize(
    "name, says",
    [("kontext", "FLUX.1 Kontext edits from a reference image"),
     ("qwen-edit", r"Qwen-Image-Edit edits from a reference image: give the input image \(image=\)")],
)
def test_a_family_that_edits_from_a_reference_refuses_a_call_without_one(name: str, says: str, tiny_family) -> None:
    from kdiff_differential.errors import InputError

    with pytest.raises(InputError, match=says):
        load_pipeline(tiny_family(name)).extra_args("a red cat")


@pytest.mark.parametrize("name", ["sd-eps", "sd-v"])
def test_wrapper_is_chosen_by_prediction_type(name: str, tiny_family, fitted) -> None:
    from k_diffusion import external

    loaded = fitted(name)
    prediction = json.loads((tiny_family(name) / "scheduler" / "scheduler_config.json").read_text())["prediction_type"]
    expected = external.CompVisVDenoiser if prediction == "v_prediction" else external.CompVisDenoiser
    assert type(loaded.denoiser.inner_model) is expected
    assert loaded.latent.shape == (1, 4, 16, 18)  # 31x37 rounded to 32x36, over the VAE's factor 2


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_the_latent_is_shifted_scaled_and_unpacked(name: str, fitted) -> None:
    loaded = fitted(name)
    assert loaded.latent.shape == (1, 4, 16, 18)  # 31x37 -> 32x36, over the VAE's factor 2; Flux packs 8x9 tokens
    vae = loaded.pipeline.vae
    assert vae.config.shift_factor == 0.1 and vae.config.scaling_factor == 1.5
    pixels = torch.rand(1, 3, 32, 36, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z = vae.encode(pixels).latent_dist.mode()
        decoded = torch.nn.functional.interpolate(
            vae.decode(z).sample.clamp(-1, 1), size=(31, 37), mode="bicubic", align_corners=False, antialias=True
        )
    torch.testing.assert_close(loaded.pipeline.encode(pixels), (z - 0.1) * 1.5)
    expected = ((decoded[0].permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).numpy()
    assert np.abs(loaded.decode((z - 0.1) * 1.5).astype(float) - expected).max() <= 1


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_sd3_guides_with_the_negative_prompt_and_flux_dev_embeds_the_scale(name: str, fitted) -> None:
    loaded = fitted(name)
    args = loaded.extra_args("a red cat", "blurry", 4.0)
    if loaded.pipeline.family.guided:  # SD3: CLIP 32 + 32 padded to T5's 64, then T5's 16 tokens after CLIP's 16
        assert args["cfg_scale"] == 4.0 and args["cond"]["text"].shape == (1, 32, 64)
        assert args["cond"]["pooled"].shape == (1, 64)
        assert not torch.equal(args["cond"]["text"], args["uncond"]["text"])
    else:
        assert set(args) == {"cond"} and args["cond"]["guidance"].item() == 4.0
        assert args["cond"]["text"].shape == (1, 16, 32) and args["cond"]["pooled"].shape == (1, 32)
    x = loaded.latent + 3 * torch.randn_like(loaded.latent)
    sigma = torch.tensor([3.0])
    low, high = (loaded.denoiser(x, sigma, **loaded.extra_args("a red cat", "blurry", cfg)) for cfg in (1.0, 6.0))
    assert (low - high).abs().mean() > 1e-3  # the scale reaches the model either way


@pytest.mark.parametrize("name", ["sd3", "flux"])
def test_flux_dev_guides_at_3_5_and_sd3_at_7_unless_told(name: str, tiny_family) -> None:
    pipe = load_pipeline(tiny_family(name))
    args = pipe.extra_args("a red cat", "blurry")
    if pipe.family.guided:
        assert args["cfg_scale"] == 7.0
    else:
        assert args["cond"]["guidance"].item() == 3.5
    assert pipe.extra_args("a red cat", "blurry", 2.0).get("cfg_scale", 2.0) == 2.0


def test_flux_schnell_takes_no_guidance(fitted) -> None:
    model = fitted("flux-schnell")
    args = model.extra_args("a cat", "", 3.5)
    assert "guidance" not in args["cond"]
    edit = differential_edit(model.denoiser, model.latent, torch.ones(16, 18), sampler="euler", steps=2, schedule="model", extra_args=args)
    assert torch.isfinite(edit.result).all()


def test_sd3_without_t5_pads_with_zeros_as_diffusers(tmp_path: Path) -> None:
    """An SD3 folder saved without its third encoder (a common way to save memory): the
    T5 part of the text is zeros of T5's length, as diffusers' pipeline makes it."""
    folder = save_tiny_flow(tmp_path, "sd3")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    for name in ("text_encoder_3", "tokenizer_3"):
        shutil.rmtree(folder / name)
    pipe = load_pipeline(folder)
    cond = pipe.extra_args("a red cat", "", 2.0)["cond"]
    assert cond["text"].shape == (1, 16 + 256, 64)
    assert not cond["text"][:, 16:].any() and cond["text"][:, :16].abs().sum() > 0


@pytest.mark.parametrize("name", ["sd3", "flux"])
@pytest.mark.parametrize(
    "call, error, says",
    [
        (lambda pipe: pipe.denoiser_for("abc"), TypeError, "latent must be a tensor (B, C, h, w) or a size (h, w), got 'abc'"),
        (lambda pipe: pipe.denoiser_for((15, 17)), ValueError, "positive multiples of 2 for this model, got (15, 17)"),
        (lambda pipe: pipe.extra_args(None), TypeError, "prompt must be a str, got NoneType"),
        (lambda pipe: pipe.extra_args("a cat", cfg="x"), TypeError, "cfg must be a finite number, got 'x'"),
        (lambda pipe: pipe.encode(np.zeros((8, 8, 3))), ValueError, "image must be uint8 (H, W, 3), got float64 (8, 8, 3)"),
        (lambda pipe: pipe.encode(torch.zeros(3, 8, 8)), ValueError, "image must be pixels (1, 3, H, W) in [-1, 1], got shape (3, 8, 8)"),
    ],
    ids=["latent-type", "latent-size", "prompt", "cfg", "image-dtype", "image-shape"],
)
def test_the_python_loader_names_the_bad_argument(name: str, tiny_family, call, error, says) -> None:
    pipe = load_pipeline(tiny_family(name))
    with pytest.raises(error) as raised:
        call(pipe)
    assert says in str(raised.value)


def test_a_bad_device_is_named() -> None:
    from kdiff_differential.models.diffusers_model import _device

    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got 'gpu'"):
        _device("gpu")


UNET_HEIGHT, UNET_WIDTH = 24, 32  # pixels; the tiny VAEs' factor is 2
INPAINTING = {"sd-inpaint": "pipeline_stable_diffusion_inpaint", "sdxl-inpaint": "pipeline_stable_diffusion_xl_inpaint"}


def diffusers_inpainting_channels(folder: Path, module: str, image: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The mask and masked-image latent, (1, 5, h, w), as StableDiffusion(XL)InpaintPipeline
    prepares them for the half map (its image and mask processors, the pixels to change
    set to 0, prepare_mask_latents), the VAE's mode taken rather than a sample, as ours."""
    from PIL import Image
    from diffusers import pipelines

    source = getattr(pipelines.stable_diffusion_xl if "xl" in module else pipelines.stable_diffusion, module)
    retrieve = source.retrieve_latents
    monkeypatch.setattr(source, "retrieve_latents", lambda output, generator=None, sample_mode="sample": retrieve(output, sample_mode="argmax"))
    reference = diffusers.DiffusionPipeline.from_pretrained(folder, local_files_only=True)
    height, width = image.shape[:2]
    init = reference.image_processor.preprocess(Image.fromarray(image), height=height, width=width).float()
    mask = reference.mask_processor.preprocess(Image.fromarray((halves(height, width).numpy() * 255).astype(np.uint8)), height=height, width=width)
    mask, masked = reference.prepare_mask_latents(mask, init * (mask < 0.5), 1, height, width, torch.float32, torch.device("cpu"), None, False)
    return torch.cat([mask, masked], dim=1)


@pytest.mark.parametrize("name", ["sdxl-eps", "sdxl-v", "sdxl-inpaint", "sd-inpaint", "sdxl-refiner"])
def test_conditioning_has_the_shapes_the_unet_config_demands(name: str, tiny_family, monkeypatch: pytest.MonkeyPatch) -> None:
    """... and an inpainting UNet's extra channels are diffusers' own."""
    folder = tiny_family(name)
    image = ramp_image(UNET_HEIGHT, UNET_WIDTH)
    pipe = load_pipeline(folder)
    config = pipe.denoiser.inner_model.inner_model.unet.config
    args = pipe.extra_args("a red cat", "", 5.0, image=image, change_map=halves(UNET_HEIGHT, UNET_WIDTH))
    cond, uncond = args["cond"], args["uncond"]
    assert cond.keys() == uncond.keys()
    assert cond["crossattn"].shape == (1, 16, config.cross_attention_dim)
    if config.addition_embed_type == "text_time" and name == "sdxl-refiner":
        assert pipe.family.name == "Stable Diffusion XL refiner"
        assert cond["text_embeds"].shape[-1] + 5 * config.addition_time_embed_dim == config.projection_class_embeddings_input_dim
        # The aesthetic score of the prompt and of the negative, as diffusers' defaults.
        assert cond["time_ids"].tolist() == [[UNET_HEIGHT, UNET_WIDTH, 0, 0, 6.0]]
        assert uncond["time_ids"].tolist() == [[UNET_HEIGHT, UNET_WIDTH, 0, 0, 2.5]]
        assert uncond["crossattn"].any()  # force_zeros_for_empty_prompt is off: "" is encoded
    elif config.addition_embed_type == "text_time":
        assert pipe.family.name == "Stable Diffusion XL"
        assert cond["text_embeds"].shape[-1] + 6 * config.addition_time_embed_dim == config.projection_class_embeddings_input_dim
        assert cond["time_ids"].tolist() == [[UNET_HEIGHT, UNET_WIDTH, 0, 0, UNET_HEIGHT, UNET_WIDTH]]
        # force_zeros_for_empty_prompt (diffusers' default) and no negative: all zeros.
        assert not uncond["crossattn"].any() and not uncond["text_embeds"].any()
    if config.in_channels == 9:
        assert pipe.inpainting
        assert cond["concat"].shape == (1, 5, UNET_HEIGHT // 2, UNET_WIDTH // 2)
        torch.testing.assert_close(cond["concat"][0, 0], halves(UNET_HEIGHT // 2, UNET_WIDTH // 2))
        # The mask at latent size and the latent of the image with the pixels to change
        # set to 0 in [-1, 1] (mid-grey): diffusers' preparation.
        expected = diffusers_inpainting_channels(folder, INPAINTING[name], image, monkeypatch)
        torch.testing.assert_close(cond["concat"], expected, rtol=1e-5, atol=1e-5)
    else:
        assert "concat" not in cond and not pipe.inpainting


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


def test_zimage_base_defaults_are_its_pipelines(tiny_family) -> None:
    """A Z-Image folder not named Turbo runs ZImagePipeline's defaults: 50 steps,
    guidance_scale 5 (our cfg 6)."""
    from kdiff_differential.models.families import ZImage

    config = diffusers.ZImageTransformer2DModel.load_config(tiny_family("zimage-turbo") / "transformer")
    family = ZImage("models/Z-Image", {"_class_name": "ZImagePipeline"}, config, {}, torch.device("cpu"))
    assert family.defaults() == ("model", 50, 6.0)


def test_flux2_latent_codec_inverts_the_vae_normalisation(tiny_family) -> None:
    """Encoding is the posterior's mode patchified 2x2 and normalised by the VAE's running
    statistics (Flux2KleinPipeline's reference-image latent), 16 channels at a quarter of
    the size; decoding undoes both."""
    klein = tiny_family("klein")
    image = ramp_image(32, 36)
    pipe = load_pipeline(klein)
    latent = pipe.encode(image)
    assert latent.shape == (1, 16, 32 // 4, 36 // 4)
    reference = diffusers.Flux2KleinPipeline.from_pretrained(klein, local_files_only=True)
    pixels_ = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    torch.testing.assert_close(latent, reference._encode_vae_image(pixels_, None), atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        bn = reference.vae.bn
        raw = reference._unpatchify_latents(latent * torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps) + bn.running_mean.view(1, -1, 1, 1))
        torch.testing.assert_close(pipe.decode(latent), reference.vae.decode(raw).sample.clamp(-1, 1), atol=1e-5, rtol=1e-5)


def test_single_files_zimage_loads_and_klein_is_refused(tiny_family) -> None:
    """A Z-Image transformer file with its folder as --config is Z-Image (named Turbo, so
    Turbo's defaults), its weights the folder's; a Klein transformer file, whose tensors
    are named as FLUX.2 dev's, is refused in one line."""
    from kdiff_differential.errors import InputError

    zimage, klein = tiny_family("zimage-turbo"), tiny_family("klein")
    single = load_pipeline(zimage / "transformer" / "diffusion_pytorch_model.safetensors", config=zimage)
    assert (single.description, single.steps) == ("Z-Image, text-to-image, flow matching", 8)
    folder = dict(load_pipeline(zimage).network.named_parameters())
    assert all(torch.equal(value, folder[name]) for name, value in single.network.named_parameters())
    with pytest.raises(InputError, match="no model family recognises"):
        load_pipeline(klein / "transformer" / "diffusion_pytorch_model.safetensors", config=klein)


def test_a_single_transformer_file_loads_as_qwen_image_with_its_folder_as_config(tiny_family, tmp_path: Path, offline_cache: Path) -> None:
    """The transformer alone in one .safetensors file (diffusers' names, as ComfyUI's
    split files have them; its output bias changed, to tell it from the folder's), the
    other parts from --config: the file's weights in the family's pipeline. Without
    --config, offline, one line naming the default configuration, Qwen/Qwen-Image."""
    from safetensors.torch import save_file

    from kdiff_differential.errors import InputError

    qwen = tiny_family("qwen")
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
def test_the_qwen_image_schedule_is_the_scheduler_s_with_its_terminal_stretch(steps: int, tiny_family) -> None:
    """Qwen-Image's schedule (dynamic shift, stretched to end at t = 0.02) in sigma: the
    flow times diffusers' scheduler sets for the pipeline's linspace(1, 1/n, n)."""
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    from kdiff_differential.models.flow import FlowDenoiser

    config = dict(diffusers.FlowMatchEulerDiscreteScheduler.load_config(tiny_family("qwen") / "scheduler"))
    tokens = 4096
    ours = FlowDenoiser.from_scheduler_config(lambda x, t: x, config, tokens).get_sigmas(steps)
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(config)
    mu = calculate_shift(tokens, config["base_image_seq_len"], config["max_image_seq_len"], config["base_shift"], config["max_shift"])
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    assert scheduler.sigmas[-2] == pytest.approx(0.02, rel=1e-6)
    torch.testing.assert_close(FlowDenoiser.sigma_to_t(ours).float(), scheduler.sigmas, rtol=1e-6, atol=0)
