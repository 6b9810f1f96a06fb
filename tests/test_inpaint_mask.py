"""--inpaint-mask: an inpainting network's mask channel fixed (the map binarised at 0.5)
or released (the wrapper's blend mask at each call), on a tiny random SD inpainting
pipeline; refused in one line where the network has no inpainting channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ramp_image, save_tiny_sd_inpainting

from kdiff_differential import load_pipeline
from kdiff_differential.cli import main
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.errors import InputError

HEIGHT, WIDTH = 24, 32  # pixels; the tiny VAE's factor is 2


@pytest.fixture(scope="module")
def pipe(tmp_path_factory: pytest.TempPathFactory):
    return load_pipeline(save_tiny_sd_inpainting(tmp_path_factory.mktemp("inpaint")))


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return ramp_image(HEIGHT, WIDTH)


def mask_channels(pipe, image: np.ndarray, mode: str, sampler: str = "euler"):
    """Run a gradient-map edit at cfg 4 (a batch of 2 per call); the mask channel the
    UNet got at each call, (N, 1, h, w), and the edit."""
    seen = []
    hook = pipe.network.register_forward_pre_hook(lambda module, args: seen.append(args[0][:, 4:5].clone()))
    try:
        change = torch.linspace(0, 1, WIDTH).expand(HEIGHT, WIDTH)
        args = pipe.extra_args("a cat", "", 4.0, image=image, change_map=change, inpaint_mask=mode)
        latent = pipe.encode(image)
        edit = differential_edit(pipe.denoiser, latent, torch.linspace(0, 1, WIDTH // 2).expand(HEIGHT // 2, WIDTH // 2), sampler=sampler, steps=3, extra_args=args, seed=1, release="binary")
    finally:
        hook.remove()
    return seen, edit


def test_fixed_is_the_map_binarised_at_every_call(pipe, image: np.ndarray) -> None:
    seen, edit = mask_channels(pipe, image, "fixed")
    expected = (torch.arange(WIDTH // 2) >= WIDTH // 4).float().expand(HEIGHT // 2, WIDTH // 2)
    assert len(seen) == 3
    for channel in seen:
        assert channel.shape == (2, 1, HEIGHT // 2, WIDTH // 2)
        torch.testing.assert_close(channel[:, 0], expected.expand(2, -1, -1))


def test_released_is_the_wrappers_release_mask_at_each_call(pipe, image: np.ndarray) -> None:
    seen, edit = mask_channels(pipe, image, "released")
    assert len(seen) == 3
    for channel, sigma in zip(seen, edit.wrapper.sigmas[:-1]):
        released = edit.wrapper.mask(float(sigma))[0]
        torch.testing.assert_close(channel, released.expand(2, -1, -1, -1))
    # More is released at each call: the channel grows, and starts below the fixed mask.
    assert seen[0].sum() < seen[1].sum() < seen[2].sum() and seen[0].mean() < 0.5


def test_released_keeps_kept_pixels_exact(pipe, image: np.ndarray) -> None:
    latent = pipe.encode(image)
    _, edit = mask_channels(pipe, image, "released", sampler="dpmpp_2m")
    torch.testing.assert_close(edit.result[..., :1], latent[..., :1], atol=1e-5, rtol=0)


def test_a_network_without_inpainting_channels_refuses_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from conftest import save_tiny_sdxl

    plain = load_pipeline(save_tiny_sdxl(tmp_path, "epsilon"))
    with pytest.raises(InputError, match="inpaint_mask=released: this Stable Diffusion XL network has no inpainting channels"):
        plain.extra_args("a cat", inpaint_mask="released")
    capsys.readouterr()
    status = main(["--inpaint-mask", "fixed", "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "the built-in model has no inpainting channels" in err
    assert not (tmp_path / "x.png").exists()
