"""SD3 and Flux.1 through diffusers, end to end, on tiny randomly initialised pipelines.

Each pipeline (transformer, VAE with a shift factor, CLIP and T5 text encoders, a CLIP
tokenizer and a T5-style fast tokenizer with vocabularies written here) is saved with
``save_pretrained`` and loaded back through ``--model PATH`` and ``load_model``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from kdiff_differential.edit import OWN_STEPS, SAMPLERS, differential_edit
from conftest import kdiff, pixels, save_tiny_flow

FAMILIES = ("sd3", "flux")


@pytest.fixture(scope="module", params=FAMILIES)
def model_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_flow(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def loaded(model_dir: Path, image_file: Path):
    from kdiff_differential.images import read_image
    from kdiff_differential.models import load_model

    return load_model(str(model_dir), read_image(str(image_file)), torch.device("cpu"))


SAMPLERS_CLI = {"sd3": "dpmpp_2m_sde", "flux": "dpm_adaptive"}


def test_the_command_line_runs_a_flow_folder(model_dir: Path, image_file: Path, tmp_path: Path) -> None:
    family = "flux" if model_dir.parent.name.startswith("flux") else "sd3"
    args = [
        "--model", str(model_dir), "--image", str(image_file), "--map", "radial", "--prompt", "a red cat",
        "--negative", "blurry", "--cfg", "4", "--sampler", SAMPLERS_CLI[family],
    ]
    if SAMPLERS_CLI[family] != "dpm_adaptive":  # which chooses its own steps, and says so when given them
        args += ["--steps", "3"]
    done = kdiff(*args, "--out", "a.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pixels(tmp_path / "a.png").shape == (31, 37, 3)
    name = {"sd3": "Stable Diffusion 3/3.5", "flux": "Flux.1"}[family]
    assert f"model: {name}, text-to-image, flow matching" in done.stderr, done.stderr
    done = kdiff(*args, "--schedule", "karras", "--out", "b.png", cwd=tmp_path)
    assert done.returncode == 2 and "--schedule model" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    done = kdiff(*args, "--clock", "sigma", "--out", "b.png", cwd=tmp_path)
    assert done.returncode == 2 and "--clock timestep or step" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "b.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_command_line_runs_every_sampler(model_dir: Path, image_file: Path, tmp_path: Path, sampler: str, capsys) -> None:
    """Every sampler from the command line (in-process: the subprocess path is above),
    with the family's default schedule; kept pixels (the map's dark corners) exact."""
    from kdiff_differential.cli import main

    out = tmp_path / "out.png"
    steps = [] if sampler in OWN_STEPS else ["--steps", "2"]
    argv = ["--model", str(model_dir), "--image", str(image_file), "--map", "radial", "--prompt", "a red cat",
            "--sampler", sampler, *steps, "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    written, original = pixels(out), pixels(image_file)
    assert written.shape == original.shape == (31, 37, 3)
    assert np.array_equal(written[0, 0], original[0, 0])  # radial: the corners are kept


def test_the_latent_is_shifted_scaled_and_unpacked(loaded) -> None:
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


def test_sd3_guides_with_the_negative_prompt_and_flux_dev_embeds_the_scale(loaded) -> None:
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


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_keeps_kept_pixels_and_changes_the_rest(loaded, sampler: str) -> None:
    halves = torch.zeros(16, 18)
    halves[:, 9:] = 1
    edit = differential_edit(
        loaded.denoiser, loaded.latent, halves, sampler=sampler, steps=None if sampler in OWN_STEPS else 3, schedule="model",
        extra_args=loaded.extra_args("a cat", "blurry", 3.0),
    )
    assert torch.isfinite(edit.result).all()
    torch.testing.assert_close(edit.result[..., :8], loaded.latent[..., :8], atol=1e-5, rtol=0)
    assert (edit.result[..., 10:] - loaded.latent[..., 10:]).abs().mean() > 0.1


def test_flux_schnell_takes_no_guidance(tmp_path: Path, image_file: Path) -> None:
    from kdiff_differential.images import read_image
    from kdiff_differential.models import load_model

    model = load_model(str(save_tiny_flow(tmp_path, "flux", guidance=False)), read_image(str(image_file)))
    args = model.extra_args("a cat", "", 3.5)
    assert "guidance" not in args["cond"]
    edit = differential_edit(model.denoiser, model.latent, torch.ones(16, 18), sampler="euler", steps=2, schedule="model", extra_args=args)
    assert torch.isfinite(edit.result).all()


def test_flux_schnell_on_its_fixed_shift_schedule_is_the_diffusers_pipeline(tmp_path: Path) -> None:
    """schnell's scheduler shifts by a constant (no dynamic shifting), and FluxPipeline
    still passes its own sigmas, linspace(1, 1/n, n): the same 4 steps as ours."""
    import json

    from kdiff_differential import load_pipeline

    folder = save_tiny_flow(tmp_path, "flux", guidance=False)
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "use_dynamic_shifting": False, "shift": 1.0}))
    pipe = load_pipeline(folder)
    assert (pipe.schedule, pipe.steps) == ("model", 4)
    latent = torch.zeros(1, 4, 16, 18)
    edit = differential_edit(pipe.denoiser_for(latent), latent, torch.ones(16, 18), sampler="euler", steps=4, schedule="model",
                             extra_args=pipe.extra_args("a red cat"), seed=5)
    reference = diffusers.FluxPipeline.from_pretrained(folder, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    out = reference(prompt="a red cat", height=32, width=36, num_inference_steps=4, max_sequence_length=16, output_type="latent",
                    latents=diffusers.FluxPipeline._pack_latents(edit.wrapper.noise, 1, 4, 16, 18)).images
    expected = diffusers.FluxPipeline._unpack_latents(out, 32, 36, reference.vae_scale_factor)
    assert (expected - edit.wrapper.noise).abs().mean() > 0.1
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


def test_euler_with_everything_released_is_the_diffusers_pipeline(model_dir: Path) -> None:
    """End to end against diffusers' own StableDiffusion3Pipeline / FluxPipeline (output
    latents, same initial noise, same steps): the folder's text encoding, guidance, Flux's
    packing and the model's shifted schedule all agree with ours, to rounding."""
    from kdiff_differential import load_pipeline

    flux = model_dir.parent.name.startswith("flux")
    pipe = load_pipeline(model_dir)
    latent = torch.zeros(1, 4, 16, 18)  # all released: only its shape matters
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, torch.ones(16, 18), sampler="euler", steps=4, schedule="model",
        extra_args=pipe.extra_args("a red cat", "blurry", 3.0), seed=5,
    )
    noise = edit.wrapper.noise
    kind = diffusers.FluxPipeline if flux else diffusers.StableDiffusion3Pipeline
    reference = kind.from_pretrained(model_dir, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    settings = dict(prompt="a red cat", height=32, width=36, num_inference_steps=4, guidance_scale=3.0, max_sequence_length=16, output_type="latent")
    if flux:
        packed = diffusers.FluxPipeline._pack_latents(noise, 1, 4, 16, 18)
        out = reference(latents=packed, **settings).images
        expected = diffusers.FluxPipeline._unpack_latents(out, 32, 36, reference.vae_scale_factor)
    else:
        expected = reference(latents=noise, negative_prompt="blurry", **settings).images
    assert (expected - noise).abs().mean() > 0.1  # the model moved the noise: the comparison is not of two copies of it
    assert (edit.result - expected).abs().max() < 1e-4 * expected.abs().max()


def test_sd3_without_t5_pads_with_zeros_as_diffusers(tmp_path: Path) -> None:
    """An SD3 folder saved without its third encoder (a common way to save memory): the
    T5 part of the text is zeros of T5's length, as diffusers' pipeline makes it."""
    from kdiff_differential import load_pipeline

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


def test_a_class_outside_diffusers_and_transformers_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from kdiff_differential.cli import main

    folder = save_tiny_flow(tmp_path, "flux")
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["os", "system"]
    (folder / "model_index.json").write_text(json.dumps(index))
    capsys.readouterr()  # saving's own progress bars
    assert main(["--model", str(folder), "--out", str(tmp_path / "x.png"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "expected a diffusers or transformers class" in err and "transformer" in err, err


def test_the_sampler_comparison_runs_a_flow_folder_on_its_own_schedule(model_dir: Path, image_file: Path, tmp_path: Path) -> None:
    from samplers.compare import main

    out = tmp_path / "compare"
    argv = ["--out", str(out), "--model", str(model_dir), "--image", str(image_file), "--samplers", "euler,dpmpp_2m", "--steps", "2", "--quiet"]
    assert main(argv) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",nan," not in row for row in rows[1:])


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
def test_the_python_loader_names_the_bad_argument(model_dir: Path, call, error, says) -> None:
    from kdiff_differential import load_pipeline

    pipe = load_pipeline(model_dir)
    with pytest.raises(error) as raised:
        call(pipe)
    assert says in str(raised.value)


def test_a_bad_device_is_named() -> None:
    from kdiff_differential.models.diffusers_model import _device

    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got 'gpu'"):
        _device("gpu")


def test_flux_dev_guides_at_3_5_and_sd3_at_7_unless_told(model_dir: Path) -> None:
    from kdiff_differential import load_pipeline

    pipe = load_pipeline(model_dir)
    args = pipe.extra_args("a red cat", "blurry")
    if pipe.family.guided:
        assert args["cfg_scale"] == 7.0
    else:
        assert args["cond"]["guidance"].item() == 3.5
    assert pipe.extra_args("a red cat", "blurry", 2.0).get("cfg_scale", 2.0) == 2.0
