"""Memory options for the diffusers families, wired on the CPU with the tiny Stable
Diffusion pipeline: --dtype, --offload (diffusers' model CPU offload) and --vae-tiling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny_sd
from PIL import Image

from kdiff_differential import load_pipeline
from kdiff_differential.cli import main
from kdiff_differential.edit import differential_edit


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd"), "epsilon")


def edited(pipe) -> torch.Tensor:
    """An all-released Euler edit with guidance, decoded: pixels (1, 3, 16, 20)."""
    latent = torch.zeros(1, 4, 8, 10)
    args = pipe.extra_args("a red cat", "blurry", 3.0)
    result = differential_edit(pipe.denoiser_for(latent), latent, torch.ones(8, 10), sampler="euler", steps=3, extra_args=args, seed=2).result
    return pipe.decode(result)


@pytest.fixture(scope="module")
def plain(folder: Path) -> torch.Tensor:
    return edited(load_pipeline(folder))


def test_fp32_is_the_cpu_default_and_bf16_is_close(folder: Path, plain: torch.Tensor) -> None:
    assert torch.equal(edited(load_pipeline(folder, dtype="fp32")), plain)
    half = load_pipeline(folder, dtype="bf16")
    assert half.network.dtype == torch.bfloat16 and half.family.text["text_encoder"].dtype == torch.bfloat16
    assert half.vae.dtype == torch.float32  # its config says force_upcast
    # bf16 keeps 8 bits of mantissa: the picture moves, a little, in [-1, 1].
    assert 0 < (edited(half) - plain).abs().mean() < 0.05
    with pytest.raises(ValueError, match="dtype must be one of fp16, bf16, fp32"):
        load_pipeline(folder, dtype="int8")


def test_offload_hooks_every_part_and_changes_no_number(folder: Path, plain: torch.Tensor) -> None:
    pipe = load_pipeline(folder, offload=True)
    for part in (pipe.network, pipe.vae, pipe.family.text["text_encoder"]):
        assert hasattr(part, "_hf_hook")  # accelerate's hook: moved to the device when it runs
    assert torch.equal(edited(pipe), plain)


def test_vae_tiling_agrees_with_untiled_decoding(folder: Path) -> None:
    """Tiles of the tiny VAE are 32 pixels (16 latent), blended over a quarter: on a
    64x64 noise latent, tiled and untiled decodes differ by a mean 0.042 in [-1, 1]
    (GroupNorm statistics and the mid-block attention are per tile). A latent within one
    tile is decoded whole, exactly as without tiling."""
    plain, tiled = load_pipeline(folder), load_pipeline(folder, vae_tiling=True)
    latent = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    difference = (tiled.decode(latent) - plain.decode(latent)).abs().mean()
    other = (plain.decode(latent) - plain.decode(latent.roll(7, dims=-1))).abs().mean()
    assert 0 < difference < 0.06 and difference < other / 3
    small = latent[..., :16, :16]
    assert torch.equal(tiled.decode(small), plain.decode(small))


def test_the_command_line_takes_the_memory_options(folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import diffusers

    called = []
    for owner, method in ((diffusers.AutoencoderKL, "enable_tiling"), (diffusers.DiffusionPipeline, "enable_model_cpu_offload")):
        original = getattr(owner, method)
        monkeypatch.setattr(owner, method, lambda self, *a, _o=original, _m=method, **k: (called.append(_m), _o(self, *a, **k))[1])
    image = np.random.default_rng(0).integers(0, 256, (24, 28, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    common = ["--model", str(folder), "--image", str(tmp_path / "in.png"), "--steps", "2", "--quiet", "--composite", "none"]
    assert main([*common, "--out", str(tmp_path / "plain.png")]) == 0
    assert main([*common, "--offload", "--dtype", "fp32", "--out", str(tmp_path / "offload.png")]) == 0
    assert main([*common, "--vae-tiling", "--dtype", "bf16", "--out", str(tmp_path / "tiled.png")]) == 0
    plain, offload, tiled = (np.asarray(Image.open(tmp_path / f"{name}.png")) for name in ("plain", "offload", "tiled"))
    assert np.array_equal(plain, offload)
    assert called == ["enable_model_cpu_offload", "enable_tiling"]
    assert tiled.shape == plain.shape and np.abs(tiled.astype(int) - plain).mean() < 20
