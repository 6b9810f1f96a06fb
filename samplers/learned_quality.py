"""How well the learned denoiser denoises and generalises, on images it never saw.

    python -m samplers.learned_quality [--weights PATH] [--pictures DIR]

Prints the denoising MSE (the x0 prediction against the clean image, in [-1, 1] units,
averaged over noise draws) at a few noise levels, for the learned model, the built-in
model (:func:`~kdiff_differential.models.builtin.builtin_denoiser`) and a trivial
predictor, on held-out images: the benchmark's landscape (``samplers/banding.py``) and
scikit-image's astronaut (the demo image), both kept out of training. The trivial
predictor is the best per-channel linear shrinkage, told the clean image's own mean and
variance: mean + (x - mean) * var / (var + sigma^2), which beats both the noisy input
(MSE sigma^2) and the constant mean (MSE var).

With ``--pictures``, it writes PNGs there: samples from pure noise (dpmpp_2m, 20 Karras
steps over the model's sigma range) and a Differential Diffusion edit of each held-out
image with a left-to-right gradient map.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

SIGMAS = (0.05, 0.2, 0.5, 1.0, 2.0, 5.0)


def held_out(height: int = 192, width: int = 384) -> dict[str, "torch.Tensor"]:
    """The held-out images, float32 (1, 3, height, width) in [-1, 1]."""
    from kdiff_differential.pixels import to_tensor
    from kdiff_differential.models.builtin import EXAMPLE_IMAGE, fit_pixels, photograph
    from samplers.banding import smooth_scene

    return {"landscape": to_tensor(smooth_scene(height, width)), "astronaut": fit_pixels(photograph(EXAMPLE_IMAGE), height, width)}


def trivial(image: "torch.Tensor", noisy: "torch.Tensor", sigma: float) -> "torch.Tensor":
    """The best per-channel linear shrinkage of ``noisy`` towards ``image``'s own mean."""
    mean = image.mean((-2, -1), keepdim=True)
    variance = image.var((-2, -1), keepdim=True, unbiased=False)
    return mean + (noisy - mean) * variance / (variance + sigma**2)


def denoising_mse(denoiser, image: "torch.Tensor", sigma: float, draws: int = 4, seed: int = 0) -> float:
    """Mean squared error of ``denoiser``'s x0 prediction (``None``: the trivial predictor)
    at ``sigma``, over ``draws`` noise draws (one batch)."""
    import torch

    noise = torch.randn((draws, *image.shape[1:]), generator=torch.Generator().manual_seed(seed))
    clean = image.expand(draws, -1, -1, -1)
    noisy = clean + sigma * noise
    with torch.inference_mode():
        if denoiser is None:
            prediction = trivial(clean, noisy, sigma)
        else:
            prediction = denoiser(noisy, torch.full((draws,), sigma))
    return (prediction.float() - clean).pow(2).mean().item()


def mse_table(learned, height: int = 192, width: int = 384, sigmas: Sequence[float] = SIGMAS) -> dict:
    """{(image, sigma): (learned, built-in, trivial)} MSEs."""
    from kdiff_differential.models.builtin import builtin_denoiser

    builtin = builtin_denoiser(height, width)
    return {(name, sigma): tuple(denoising_mse(model, image, sigma) for model in (learned, builtin, None))
            for name, image in held_out(height, width).items() for sigma in sigmas}


def sample(denoiser, height: int, width: int, seed: int, steps: int = 20) -> "torch.Tensor":
    """A dpmpp_2m sample from pure noise over the model's sigma range (Karras schedule)."""
    import torch
    from k_diffusion import sampling

    sigmas = sampling.get_sigmas_karras(steps, denoiser.sigma_min.item(), denoiser.sigma_max.item())
    noise = torch.randn((1, 3, height, width), generator=torch.Generator().manual_seed(seed)) * sigmas[0]
    return sampling.sample_dpmpp_2m(denoiser, noise, sigmas, disable=True)


def pictures(denoiser, folder: Path) -> list[Path]:
    """Samples from noise and gradient-map edits of the held-out images, written as PNGs."""
    import torch
    from PIL import Image

    from kdiff_differential import differential_edit
    from kdiff_differential.pixels import to_image

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(name: str, pixels: "torch.Tensor") -> None:
        path = folder / f"{name}.png"
        Image.fromarray(to_image(pixels.clamp(-1, 1))).save(path)
        written.append(path)

    rows = [torch.cat([sample(denoiser, 192, 384, seed) for seed in range(2)], -1)]
    save("samples_192x384", torch.cat(rows, -2))
    save("samples_256x256", torch.cat([sample(denoiser, 256, 256, seed) for seed in range(3)], -1))
    for name, (height, width) in (("landscape", (192, 384)), ("astronaut", (256, 256))):
        image = held_out(height, width)[name]
        change = torch.linspace(0, 1, width).expand(height, width)
        edit = differential_edit(denoiser, image, change, sampler="dpmpp_2m", steps=20, seed=0)
        save(f"edit_{name}", torch.cat([image, edit.result], -1))
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samplers.learned_quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None, help="a weights file (default: the package's)")
    parser.add_argument("--pictures", type=Path, default=None, help="write sample and edit PNGs to this folder")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    from kdiff_differential.models.learned import learned_denoiser

    torch.set_num_threads(args.threads)
    denoiser = learned_denoiser(path=args.weights)
    table = mse_table(denoiser)
    print(f"{'image':10} {'sigma':>5}  {'learned':>8} {'built-in':>8} {'trivial':>8}")
    for (name, sigma), values in table.items():
        print(f"{name:10} {sigma:5.2f}  " + " ".join(f"{value:8.4f}" for value in values))
    if args.pictures is not None:
        for path in pictures(denoiser, args.pictures):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
