"""The learned denoiser (models/learned.py) and its training script."""

import pytest
import torch
from k_diffusion import external

from kdiff_differential.models.builtin import pixel_alphas_cumprod
from kdiff_differential.models.learned import FORMAT, WEIGHTS, learned_denoiser
from samplers import train_learned
from samplers.learned_quality import denoising_mse, held_out


@pytest.fixture(scope="module")
def denoiser():
    return learned_denoiser()


def test_weights_load_without_pickle_code():
    record = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert record["format"] == FORMAT and record["sigma_data"] == 0.5
    assert all(value.dtype == torch.float16 for value in record["state_dict"].values())
    assert WEIGHTS.stat().st_size < 4e6


def test_behind_compvis_with_the_builtin_schedule(denoiser):
    assert type(denoiser) is external.CompVisDenoiser  # as the built-in model
    torch.testing.assert_close(denoiser.inner_model.alphas_cumprod, pixel_alphas_cumprod())
    assert denoiser.sigma_min.item() == pytest.approx(0.01, rel=1e-3)  # float32 alphas: 0.0100013
    assert denoiser.sigma_max.item() == pytest.approx(10.0, rel=1e-3)
    # The network hears the same sigma that the wrapper's clock turned into a timestep.
    sigma = torch.tensor([0.013, 0.2, 1.0, 7.5])
    torch.testing.assert_close(denoiser.inner_model.sigma_of_t(denoiser.sigma_to_t(sigma)), sigma, rtol=1e-4, atol=0)


def test_v_prediction_is_the_same_denoiser(denoiser):
    v = learned_denoiser(prediction="v")
    assert isinstance(v, external.CompVisVDenoiser)
    x = held_out(32, 48)["astronaut"] + 2.0 * torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for sigma in (0.02, 0.5, 2.0, 9.0):
            level = torch.tensor([sigma])
            torch.testing.assert_close(v(x * sigma / 2, level), denoiser(x * sigma / 2, level), rtol=0, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_any_size_and_dtype_without_extra_args(denoiser, dtype):
    x = torch.randn(2, 3, 60, 90, dtype=dtype)
    with torch.inference_mode():
        out = denoiser(x, torch.tensor([0.3, 4.0], dtype=dtype))
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()


# Measured MSE ratios learned / trivial at sigma 0.5 on these 96x128 held-out images:
# landscape 0.038 (0.0031 / 0.083), astronaut 0.14 (0.0205 / 0.147); the trivial
# predictor is told each image's own mean and variance. The bounds leave 2.5x slack.
@pytest.mark.parametrize("name, bound", [("landscape", 0.1), ("astronaut", 0.35)])
def test_denoises_held_out_images_better_than_trivial(denoiser, name, bound):
    image = held_out(96, 128)[name]
    learned, trivial = denoising_mse(denoiser, image, 0.5), denoising_mse(None, image, 0.5)
    assert learned < bound * trivial, (learned, trivial)


def test_training_script_writes_a_loadable_file(tmp_path):
    out = tmp_path / "tiny.pt"
    threads = torch.get_num_threads()  # the script sets the count: keep this process's
    train_learned.main(["--out", str(out), "--steps", "2", "--batch", "2", "--crop", "32", "--threads", str(threads)])
    assert out.exists() and not list(tmp_path.glob("*.tmp"))
    trained = learned_denoiser(path=out)
    with torch.inference_mode():
        assert trained(torch.zeros(1, 3, 32, 32), torch.tensor([1.0])).shape == (1, 3, 32, 32)


def test_a_differential_edit_runs_end_to_end(denoiser):
    from kdiff_differential import differential_edit

    image = held_out(32, 48)["astronaut"]
    change = torch.linspace(0, 1, 48).expand(32, 48)
    result = differential_edit(denoiser, image, change, sampler="dpmpp_2m", steps=6, seed=0).result
    assert result.shape == image.shape and torch.isfinite(result).all()
    torch.testing.assert_close(result[..., 0], image[..., 0])  # strength 0: kept
    assert (result[..., -8:] - image[..., -8:]).abs().mean() > 0.05  # strength near 1: regenerated
