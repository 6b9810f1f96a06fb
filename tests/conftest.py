"""Models built for the tests: the closed-form denoiser, tiny random networks, and tiny
random diffusers pipelines saved to folders (tokenizers written here, nothing from a hub)."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir
from PIL import Image
from torch import nn

from kdiff_differential.edit import RANGE_SAMPLERS
from kdiff_differential.edit import SAMPLERS as ALL_SAMPLERS
from kdiff_differential.models import IdealDenoiser, sd_alphas_cumprod

SIZE = 16

# Hypothesis writes nothing into the work tree (.hypothesis/): no example database, and
# its other caches (the constants it collects from the source) in a folder removed at exit.
settings.register_profile("kdiff", database=None)
settings.load_profile("kdiff")
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="kdiff-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)

# Every k-diffusion sampler: those that run a schedule, and the two that take a range.
ADAPTIVE = list(RANGE_SAMPLERS)
SAMPLERS = list(ALL_SAMPLERS)
SCHEDULED = [name for name in SAMPLERS if name not in ADAPTIVE]


def smooth_images(n: int, seed: int, size: int = SIZE) -> torch.Tensor:
    """n smooth random RGB images in [-1, 1], (n, 3, size, size)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g) * 2 - 1
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)


def ideal_denoiser(prediction: str = "eps", quantize: bool = False, spread: float = 1.0):
    """CompVisDenoiser (or CompVisVDenoiser) around the ideal denoiser of 8 smooth images.

    A spread as wide as the images' range keeps the posterior from collapsing onto one
    image early, so how much a pixel changes keeps growing with how early it is released.
    """
    from k_diffusion import external

    model = IdealDenoiser(smooth_images(8, seed=1), prediction=prediction, spread=spread)
    wrapper = external.CompVisDenoiser if prediction == "eps" else external.CompVisVDenoiser
    return wrapper(model, quantize=quantize)


class TinyCompVisNet(nn.Module):
    """A few-thousand-parameter conv net behind the CompVis interface (eps or v output)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.register_buffer("alphas_cumprod", sd_alphas_cumprod())
        self.body = nn.Sequential(nn.Conv2d(4, 24, 3, padding=1), nn.SiLU(), nn.Conv2d(24, 3, 3, padding=1))

    def apply_model(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        time = (t.float() / 1000).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:])
        return self.body(torch.cat([x, time], dim=1))


class TinyEDMNet(nn.Module):
    """A tiny conv net taking raw sigma, for k_diffusion.layers.Denoiser (no sigma_to_t)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.body = nn.Sequential(nn.Conv2d(4, 24, 3, padding=1), nn.SiLU(), nn.Conv2d(24, 3, 3, padding=1))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        level = sigma.log().reshape(-1, 1, 1, 1).expand(x.shape[0], 1, *x.shape[2:]) / 4
        return self.body(torch.cat([x, level], dim=1))


class CondIdeal(nn.Module):
    """A denoiser that uses a per-image ``cond``: the ideal denoiser's output shifted by it."""

    def __init__(self, inner_model) -> None:
        super().__init__()
        self.inner_model = inner_model

    def forward(self, x, sigma, cond):
        return self.inner_model(x, sigma) + cond.reshape(-1, 1, 1, 1) * 0.01


@pytest.fixture(scope="session")
def ideal():
    return ideal_denoiser()


@pytest.fixture(scope="session")
def latent():
    return smooth_images(1, seed=2)


@pytest.fixture(scope="session")
def gradient_map():
    """Strength rising left to right, 0 in the first column, 1 in the last."""
    return torch.linspace(0, 1, SIZE).expand(SIZE, SIZE).clone()


def ramp_image(height: int, width: int) -> "np.ndarray":
    """A smooth uint8 (height, width, 3) image: three ramps, one per channel."""
    import numpy as np

    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 7, ys * 9, (xs + ys) * 4], axis=2).clip(0, 255).astype(np.uint8)


def halves(height: int, width: int) -> torch.Tensor:
    """A change map: left half keep (0), right half change (1)."""
    change = torch.zeros(height, width)
    change[:, width // 2 :] = 1
    return change


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


def diffusers_euler(kind: type, folder: Path, edit, prepare=None, **settings) -> torch.Tensor:
    """diffusers' own pipeline ``kind`` on ``folder`` with its EulerDiscreteScheduler on
    Karras sigmas, over the steps of ``edit`` and from its noise: the output latent.

    Karras over the model's whole range is our default schedule. "linspace" spacing gives
    diffusers that whole range (the tiny SD folder's DDIM config says "leading", whose
    Karras range would start at t = 751 for 4 steps) and makes init_noise_sigma sigma_max,
    our start's level ("leading" multiplies the noise by sqrt(1 + sigma_max^2) instead).
    ``prepare(pipeline)``, when given, changes the loaded pipeline first (loads a LoRA).
    """
    import diffusers

    reference = kind.from_pretrained(folder, local_files_only=True)
    if prepare is not None:
        prepare(reference)
    reference.scheduler = diffusers.EulerDiscreteScheduler.from_config(
        reference.scheduler.config, use_karras_sigmas=True, timestep_spacing="linspace",
    )
    reference.set_progress_bar_config(disable=True)
    steps = len(edit.wrapper.sigmas) - 1
    out = reference(latents=edit.wrapper.noise, num_inference_steps=steps, output_type="latent", **settings).images
    # k-diffusion computes the Karras levels in float32, diffusers in float64 rounded once:
    # they differ by ~3e-7 relative, which moves the UNet's timesteps by up to ~2e-4 (of 999).
    torch.testing.assert_close(edit.wrapper.sigmas, reference.scheduler.sigmas, rtol=1e-6, atol=0)
    return out


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


SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hub cache, as HF_HUB_CACHE, with HF_HUB_OFFLINE=1 (both read by
    huggingface_hub when it is imported, so set on its constants here)."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def cache_as_download(folder: Path, cache: Path, repo: str) -> None:
    """``folder`` laid out as huggingface_hub leaves a download of ``repo``:
    models--org--name/snapshots/<sha>/..., refs/main naming the sha."""
    storage = cache / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, storage / "snapshots" / SHA)
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(SHA)


def build(ideal, latent, change_map, sigmas, **kwargs):
    """A DifferentialDenoiser over a schedule, its noise drawn from seed 0 unless given."""
    from kdiff_differential import DifferentialDenoiser

    kwargs.setdefault("generator", torch.Generator().manual_seed(0))
    return DifferentialDenoiser(ideal, latent, change_map, sigmas=sigmas, **kwargs)


def kdiff(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m kdiff_differential ARGS``, with no CUDA visible so that
    ``--device cuda`` fails the same way on every machine."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "kdiff_differential", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def check_samplers_keep_the_kept_half(pipe, image: np.ndarray, args: dict, samplers: list) -> None:
    """Each of ``samplers`` on ``pipe`` (a loaded diffusers pipeline) editing ``image``'s
    latent with the halves map, 2 steps on the model's schedule (dpm_adaptive its own),
    ``args`` its extra arguments: the kept half exact, the rest changed."""
    from kdiff_differential.edit import differential_edit

    latent = pipe.encode(image)
    half = latent.shape[-1] // 2
    for sampler in samplers:
        edit = differential_edit(
            pipe.denoiser_for(latent), latent, halves(*latent.shape[-2:]), sampler=sampler,
            steps=None if sampler == "dpm_adaptive" else 2, schedule="model", extra_args=args,
        )
        torch.testing.assert_close(edit.result[..., :half], latent[..., :half], atol=1e-5, rtol=0, msg=sampler)
        assert (edit.result[..., half:] - latent[..., half:]).abs().mean() > 0.05, sampler


def edit_halves_on_the_command_line(model: Path, image: np.ndarray, folder: Path, *options: str) -> subprocess.CompletedProcess:
    """``kdiff-differential --model model`` on ``image`` with the halves map, 2 steps of
    dpmpp_2m and ``options``, in ``folder``; asserts that it succeeds and keeps the left
    half's pixels byte-exact in the written PNG. The run, for its messages."""
    height, width = image.shape[:2]
    Image.fromarray(image).save(folder / "in.png")
    Image.fromarray((halves(height, width).numpy() * 255).astype(np.uint8)).save(folder / "map.png")
    done = kdiff(
        "--model", str(model), "--image", "in.png", "--map", "map.png", "--steps", "2", "--sampler", "dpmpp_2m",
        *options, "--out", "out.png", cwd=folder,
    )
    assert done.returncode == 0, done.stderr
    assert np.array_equal(pixels(folder / "out.png")[:, : width // 2], image[:, : width // 2])
    return done


@pytest.fixture(scope="module")
def image_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smooth 31x37 image: odd sizes, which the VAE's factor 2 does not divide."""
    folder = tmp_path_factory.mktemp("sd-input")
    ys, xs = np.mgrid[0:31, 0:37]
    image = np.stack([xs * 7, ys * 8, (xs + ys) * 4], axis=2).clip(0, 255).astype(np.uint8)
    Image.fromarray(image).save(folder / "in.png")
    return folder / "in.png"


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
