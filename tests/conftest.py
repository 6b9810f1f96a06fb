"""Models built for the tests: the closed-form denoiser, tiny random networks, and tiny
random diffusers pipelines saved to folders (their builders in families_tiny.py), each
family's folder built once per session (``tiny_family``)."""

from __future__ import annotations


def pytest_collectreport(report) -> None:
    """A test module that fails to import because PyTorch is broken (a torch and a
    torchvision that do not match) ends the run in one line naming the fix, rather than
    one collection error per module that imports k-diffusion."""
    if report.failed:
        import pytest

        from kdiff_differential.cli.environment import torch_problem

        problem = torch_problem()
        if problem is not None:
            report.longrepr = f"broken install: {problem}"  # instead of torchvision's traceback
            pytest.exit(f"broken install: {problem}", returncode=pytest.ExitCode.USAGE_ERROR)


import atexit
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

from kdiff_differential.core.samplers import RANGE_SAMPLERS
from kdiff_differential.core.samplers import SAMPLERS as ALL_SAMPLERS
from kdiff_differential.models.ideal import IdealDenoiser, sd_alphas_cumprod

# The tiny pipelines' builders; the test modules import those they need from here.
from families_tiny import (  # noqa: F401
    BUILDERS, as_klein_base, randomise_zeros, save_tiny_controlnet, save_tiny_flow, save_tiny_sd, save_tiny_sd_inpainting,
    save_tiny_sdxl,
)

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


def diffusers_euler(kind: type, folder: Path, edit, prepare=None, start=None, **settings) -> torch.Tensor:
    """diffusers' own pipeline ``kind`` on ``folder`` with its EulerDiscreteScheduler on
    Karras sigmas, over the steps of ``edit`` and from its noise: the output latent.
    ``start``, when given, is the clean latent that noise is added to (the wrapper's
    start, ``latent + noise * sigma_max``); by default the start is the noise alone.

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
    latents = edit.wrapper.noise
    if start is not None:  # the pipeline multiplies the latents it is given by init_noise_sigma
        reference.scheduler.set_timesteps(steps)
        latents = start / reference.scheduler.init_noise_sigma + latents
    out = reference(latents=latents, num_inference_steps=steps, output_type="latent", **settings).images
    # k-diffusion computes the Karras levels in float32, diffusers in float64 rounded once:
    # they differ by ~3e-7 relative, which moves the UNet's timesteps by up to ~2e-4 (of 999).
    torch.testing.assert_close(edit.wrapper.sigmas, reference.scheduler.sigmas, rtol=1e-6, atol=0)
    return out


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


def largest_output(module: nn.Module, run) -> int:
    """The most elements any one of ``module``'s layers outputs at once while ``run()``
    runs (without gradients): the activation memory that VAE tiling bounds."""
    largest = [0]

    def record(layer, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            largest[0] = max(largest[0], output.numel())

    hooks = [layer.register_forward_hook(record) for layer in module.modules()]
    try:
        with torch.no_grad():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return largest[0]


def kdiff(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m kdiff_differential ARGS``, with no CUDA visible so that
    ``--device cuda`` fails the same way on every machine."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(
        [sys.executable, "-m", "kdiff_differential", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``kdiff-differential ARGS`` run in this process from the folder ``cwd``, its exit
    status and output as :func:`kdiff` gives a subprocess's: the same program without an
    interpreter's and torch's start-up, for tests about what a run does, not how it starts."""
    import contextlib
    import io

    from kdiff_differential.cli import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main(list(args))
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(list(args), status, out.getvalue(), err.getvalue())


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.array(image)


def edit_halves_on_the_command_line(model: Path, image: np.ndarray, folder: Path, *options: str) -> subprocess.CompletedProcess:
    """``kdiff-differential --model model`` on ``image`` with the halves map, 2 steps of
    dpmpp_2m and ``options``, in ``folder``; asserts that it succeeds and keeps the left
    half's pixels byte-exact in the written PNG. The run, for its messages."""
    height, width = image.shape[:2]
    Image.fromarray(image).save(folder / "in.png")
    Image.fromarray((halves(height, width).numpy() * 255).astype(np.uint8)).save(folder / "map.png")
    done = run_cli(
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


@pytest.fixture(scope="session")
def tiny_family(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_family(name)``: the folder of the tiny pipeline ``name`` (a key of
    :data:`families_tiny.BUILDERS`, or "klein-base"), built on first use, shared by the
    session: a test that changes a folder builds its own."""
    built: dict[str, Path] = {}

    def folder(name: str) -> Path:
        if name not in built:
            if name == "klein-base":  # the same weights as Klein's: a copy told it is not distilled
                built[name] = as_klein_base(folder("klein"), tmp_path_factory.mktemp(name))
            else:
                built[name] = BUILDERS[name](tmp_path_factory.mktemp(name))
        return built[name]

    return folder
