"""Train the learned denoiser (kdiff_differential/models/learned.py) from scratch.

    python -m samplers.train_learned --out kdiff_differential/models/data/learned.pt

wrote the package's weights: 28000 steps of 8 crops 96x96, 73 minutes on one CPU thread
(156 ms a step, AMD EPYC; 117 ms a step on two threads, so about 55 minutes).

Data: random crops of photographs that ship inside packages we depend on
(scikit-image's in-wheel ``skimage.data`` images, matplotlib's ``grace_hopper.jpg``), at
random scales (a source square of half the crop's side up to the image's shorter side,
resized to the crop), flipped left-right, colour jittered (channel permutations,
saturation, contrast, brightness; grey images tinted). Kept out: the benchmark's scenes
(``samplers/banding.py``, synthetic) and ``astronaut`` (the demo image), which serve as
held-out images (``samplers/learned_quality.py``).

Training: sigma log-uniform over the schedule's range (its timesteps uniformly,
stratified in each batch), x = x0 + sigma * eps, the loss of k-diffusion's Karras et al.
preconditioner inside the model (the x0 error, EDM-weighted), Adam with warmup and a cosine decay, gradient clipping, and an EMA of
the weights (k-diffusion's ``EMAWarmup``) that is what gets saved. Everything is seeded:
the same ``--seed``, ``--steps`` and ``--threads`` give the same weights (other thread
counts may round differently). ``--minutes`` stops early (the learning rate then has not
finished decaying: the run says so).
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

# scikit-image's images that ship in its wheel, colour and grey (grey ones are used as
# RGB, tinted). chelsea, coffee, rocket and hubble_deep_field are the built-in model's.
COLOUR = ("chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel")
COLOUR_FILES = ("motorcycle_left.png", "motorcycle_right.png")  # in skimage.data.data_dir
GREY = ("camera", "brick", "grass", "gravel", "moon", "coins", "clock")
# matplotlib's sample data.
MATPLOTLIB = ("grace_hopper.jpg",)
# Images are first scaled down to this shorter side at most (a bound on crop cost).
MAX_SIDE = 768


def training_images() -> list[tuple[str, "torch.Tensor", bool]]:
    """(name, float32 (3, H, W) in [-1, 1], is_colour) for each training image."""
    import numpy as np
    import skimage.data
    import skimage.io
    import torch
    import torch.nn.functional as F
    from matplotlib import cbook

    from kdiff_differential.models.builtin import photograph

    raw = [(name, photograph(name), True) for name in COLOUR]
    raw += [(name, skimage.io.imread(os.path.join(skimage.data.data_dir, name)), True) for name in COLOUR_FILES]
    raw += [(name, np.asarray(skimage.io.imread(cbook.get_sample_data(name, asfileobj=False))), True) for name in MATPLOTLIB]
    raw += [(name, photograph(name), False) for name in GREY]
    images = []
    for name, array, colour in raw:
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=-1)
        array = array[..., :3]
        if array.dtype != np.uint8 or array.shape[-1] != 3:
            raise ValueError(f"{name}: expected uint8 RGB or grey, got {array.dtype} {array.shape}")
        pixels = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).float()[None] / 127.5 - 1
        scale = MAX_SIDE / min(pixels.shape[-2:])
        if scale < 1:
            size = [round(side * scale) for side in pixels.shape[-2:]]
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        images.append((name, pixels[0].clamp(-1, 1), colour))
    return images


class Crops:
    """Augmented random crops of ``images`` (from :func:`training_images`), drawn with
    ``generator``: float32 (batch, 3, crop, crop) in [-1, 1]."""

    def __init__(self, images, crop: int, generator: "torch.Generator") -> None:
        self.images, self.crop, self.generator = images, crop, generator

    def _uniform(self, low: float, high: float) -> float:
        import torch

        return low + (high - low) * torch.rand((), generator=self.generator).item()

    def _integer(self, high: int) -> int:
        import torch

        return int(torch.randint(high, (), generator=self.generator))

    def one(self) -> "torch.Tensor":
        import torch
        import torch.nn.functional as F

        _, pixels, colour = self.images[self._integer(len(self.images))]
        height, width = pixels.shape[-2:]
        # The source square: half the crop's side (scaled up 2x) to the shorter side.
        side = round(math.exp(self._uniform(math.log(self.crop / 2), math.log(min(height, width)))))
        top, left = self._integer(height - side + 1), self._integer(width - side + 1)
        patch = pixels[None, :, top : top + side, left : left + side]
        patch = F.interpolate(patch, size=(self.crop, self.crop), mode="bilinear", align_corners=False, antialias=side > self.crop)
        if self._integer(2):
            patch = patch.flip(-1)
        if colour:
            patch = patch[:, torch.randperm(3, generator=self.generator)]
            grey = patch.mean(1, keepdim=True)
            patch = grey + (patch - grey) * self._uniform(0.6, 1.3)
        else:
            gains = torch.tensor([self._uniform(0.8, 1.2) for _ in range(3)]).reshape(1, 3, 1, 1)
            patch = (patch + 1) * gains - 1
        mean = patch.mean()
        patch = (patch - mean) * self._uniform(0.8, 1.2) + mean + self._uniform(-0.1, 0.1)
        return patch.clamp(-1, 1)

    def batch(self, size: int) -> "torch.Tensor":
        import torch

        return torch.cat([self.one() for _ in range(size)])


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak``, then a cosine decay to 5% of it at ``steps``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(out: Path, steps: int, minutes: Optional[float], threads: int, batch: int, crop: int, lr: float,
          seed: int, log_every: int) -> None:
    import torch
    from k_diffusion import utils

    from kdiff_differential.models.learned import new_denoiser, save_weights

    torch.set_num_threads(threads)
    started = time.perf_counter()
    crops = Crops(training_images(), crop, torch.Generator().manual_seed(seed + 1))
    noise_generator = torch.Generator().manual_seed(seed + 2)
    model = new_denoiser(seed=seed).train()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    ema_decay = utils.EMAWarmup(power=3 / 4, max_value=0.9995)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.99))
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{len(crops.images)} images; {parameters} parameters; "
          f"{steps} steps of {batch} crops {crop}x{crop}; {threads} thread(s)", flush=True)
    t_max = len(model.sigmas) - 1
    running, count, step = 0.0, 0, 0
    for step in range(steps):
        if minutes is not None and time.perf_counter() - started > minutes * 60:
            print(f"stopped by --minutes {minutes} at step {step} of {steps}: the learning rate had not finished decaying", flush=True)
            break
        for group in optimiser.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup=min(500, steps // 10 + 1))
        x0 = crops.batch(batch)
        # The schedule's timesteps uniformly (sigma log-uniform), stratified over the batch.
        t = (torch.arange(batch) + torch.rand(batch, generator=noise_generator)) / batch * t_max
        sigma = model.t_to_sigma(t)
        noise = torch.randn(x0.shape, generator=noise_generator)
        # k-diffusion's preconditioner's loss: the x0 error with the EDM weighting,
        # (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2.
        loss = model.inner_model.denoiser.loss(x0, noise, sigma).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        utils.ema_update(model, ema, ema_decay.get_value())
        ema_decay.step()
        running, count = running + loss.item(), count + 1
        if (step + 1) % log_every == 0 or step + 1 == steps:
            elapsed = time.perf_counter() - started
            print(f"step {step + 1}/{steps}  loss {running / count:.4f}  {elapsed / 60:.1f} min  "
                  f"({elapsed / (step + 1) * 1000:.0f} ms/step)", flush=True)
            running, count = 0.0, 0
    save_weights(ema, out)
    wall = time.perf_counter() - started
    print(f"wrote {out} ({os.path.getsize(out) / 1e6:.2f} MB) after {step + 1} steps; wall time {wall / 60:.1f} min ({wall:.0f} s)", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m samplers.train_learned", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the weights file to write (atomically)")
    parser.add_argument("--steps", type=int, default=28000, help="optimiser steps (default 28000)")
    parser.add_argument("--minutes", type=float, default=None, help="stop early after this many minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=500)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 1 or args.batch < 1 or args.crop < 16:
        parser.error("--steps, --threads and --batch must be at least 1, --crop at least 16")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    train(args.out, args.steps, args.minutes, args.threads, args.batch, args.crop, args.lr, args.seed, args.log_every)
    return 0


if __name__ == "__main__":
    sys.exit(main())
