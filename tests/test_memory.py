"""Memory options for the diffusers families, on the CPU with the tiny Stable Diffusion
pipeline: --dtype (measured: the bytes the weights hold), --vae-tiling (measured: the
decoder's largest activation, by forward hooks; on CUDA, the peak allocation) and
--offload (diffusers' model CPU offload, which on a CPU-only machine has nowhere to
offload to: checked for its hooks and for changing no number)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import largest_output, save_tiny_sd
from PIL import Image

from kdiff_differential import load_pipeline
from kdiff_differential.cli import main
from kdiff_differential.core.sampling import differential_edit


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


def weight_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def test_fp32_is_the_cpu_default(folder: Path, plain: torch.Tensor) -> None:
    assert torch.equal(edited(load_pipeline(folder, dtype="fp32")), plain)
    with pytest.raises(ValueError, match="dtype must be one of fp16, bf16, fp32"):
        load_pipeline(folder, dtype="int8")


@pytest.mark.parametrize("dtype, torch_dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_halves_the_weights_and_stays_close(folder: Path, plain: torch.Tensor, dtype: str, torch_dtype) -> None:
    full, half = load_pipeline(folder), load_pipeline(folder, dtype=dtype)
    for part in ("network", "text"):
        ours = half.network if part == "network" else half.family.text["text_encoder"]
        theirs = full.network if part == "network" else full.family.text["text_encoder"]
        assert {p.dtype for p in ours.parameters()} == {torch_dtype}
        assert 2 * weight_bytes(ours) == weight_bytes(theirs)
    assert half.vae.dtype == torch.float32  # its config says force_upcast
    # 8 (bf16) or 11 (fp16) bits of mantissa: the picture moves, a little, in [-1, 1].
    result = edited(half)
    assert torch.isfinite(result).all()
    assert 0 < (result - plain).abs().mean() < 0.05


def largest_decoder_activation(pipe, latent: torch.Tensor) -> int:
    """The largest activation of the VAE decoder while ``pipe`` decodes ``latent``."""
    return largest_output(pipe.vae.decoder, lambda: pipe.decode(latent))


def test_vae_tiling_bounds_the_decoders_largest_activation(folder: Path) -> None:
    """On a 48x48 latent, three of the tiny VAE's 16-latent tiles across: untiled, the
    largest activation grows with the latent's area (9x one tile's); tiled, it stays
    that of one tile."""
    plain, tiled = load_pipeline(folder), load_pipeline(folder, vae_tiling=True)
    assert tiled.vae.tile_latent_min_size == 16
    one_tile, large = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 48, 48)
    per_tile = largest_decoder_activation(plain, one_tile)
    assert largest_decoder_activation(plain, large) == 9 * per_tile
    assert largest_decoder_activation(tiled, large) == per_tile


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for torch.cuda.max_memory_allocated")
def test_vae_tiling_lowers_the_peak_allocation_on_cuda(folder: Path) -> None:
    peaks = {}
    latent = torch.randn(1, 4, 128, 128, device="cuda")
    for tiling in (False, True):
        pipe = load_pipeline(folder, vae_tiling=tiling, device="cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        with torch.no_grad():
            pipe.decode(latent)
        torch.cuda.synchronize()
        peaks[tiling] = torch.cuda.max_memory_allocated() - start
        del pipe
    assert peaks[True] < peaks[False] / 4, peaks


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
