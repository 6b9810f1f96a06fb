"""One sweep: the list of runs, and how one run is done and measured.

A run is one (sampler, steps, seed, clock, strength, release) on the sweep's (image, map,
model). Runs are independent: an executor may do them in any order, anywhere, and
gets the same numbers back, because each run seeds itself and uses one CPU thread.
"""

from __future__ import annotations

import functools
import os
import itertools
import time
from dataclasses import asdict, dataclass
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from samplers.metrics import image_metrics
from samplers.threads import one_thread


@dataclass(frozen=True)
class Setup:
    """What every run of a sweep shares: the model ('builtin' or a diffusers
    directory), the image (None: the bundled example) and the map (a file or preset)."""

    model: str = "builtin"
    image: Optional[str] = None
    map: str = "gradient-x"
    device: str = "cpu"


@dataclass(frozen=True)
class Run:
    """One point of the sweep; ``key`` identifies it in results.csv."""

    sampler: str
    steps: int
    seed: int
    clock: str
    strength: float
    release: str = "smooth"

    @property
    def key(self) -> tuple[str, int, int, str, float, str]:
        return (self.sampler, self.steps, self.seed, self.clock, self.strength, self.release)

    @property
    def name(self) -> str:
        return (f"{self.sampler}-{self.steps}steps-seed{self.seed}-{self.clock}-strength{self.strength:g}"
                f"-{self.release}")


def plan(samplers: list[str], steps: list[int], seeds: list[int], clocks: list[str], strength: float,
         releases: tuple[str, ...] = ("smooth",)) -> list[Run]:
    """Every combination, samplers outermost: the row order of results.csv. The step
    clock counts schedule steps, which the range samplers (dpm_fast, dpm_adaptive) do not
    have: those pairs are left out. A sampler that chooses its own steps (dpm_adaptive)
    runs once, under the first step count."""
    from kdiff_differential.core.samplers import OWN_STEPS, RANGE_SAMPLERS

    return [Run(sampler, count, seed, clock, strength, release)
            for sampler, count, release, seed, clock in itertools.product(samplers, steps, releases, seeds, clocks)
            if not (clock == "step" and sampler in RANGE_SAMPLERS) and not (sampler in OWN_STEPS and count != steps[0])]


# The converged edit that a run's fidelity (cam, dam, calibration) is measured against.
CONVERGED = ("euler", 100)


def converged_run(run: Run) -> Run:
    """The converged edit for ``run``: Euler, 100 steps, smooth release, with the run's
    seed, clock and strength."""
    sampler, steps = CONVERGED
    return Run(sampler, steps, run.seed, run.clock, run.strength, "smooth")


class CountingDenoiser(nn.Module):
    """Counts the model calls the sampler really makes. The model stays ``inner_model``,
    where the wrapper finds its timestep clock."""

    def __init__(self, inner_model: nn.Module) -> None:
        super().__init__()
        self.inner_model = inner_model
        self.calls = 0

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        self.calls += 1
        return self.inner_model(x, sigma, **kwargs)


def prepared(setup: Setup) -> tuple[Any, np.ndarray, Tensor]:
    """The model fitted to the image, the image (uint8 (H, W, 3)) and the map at the
    image's size (float (H, W), 1 = change); loaded once per process and per version of
    the image and map files (a file rewritten under the same name is read again)."""
    stamps = tuple((path, os.stat(path).st_mtime_ns, os.stat(path).st_size) for path in (setup.image, setup.map)
                   if path is not None and os.path.isfile(path))
    return _prepared(setup, stamps)


@functools.lru_cache(maxsize=2)
def _prepared(setup: Setup, stamps: tuple) -> tuple[Any, np.ndarray, Tensor]:
    from kdiff_differential.models import load_model
    from kdiff_differential.models.builtin import load_example_image
    from kdiff_differential.editing.pipeline import resolve_map
    from kdiff_differential.files.images import read_image

    image = load_example_image() if setup.image is None else read_image(setup.image)
    strength = resolve_map(setup.map, image.shape[:2])
    return load_model(setup.model, image, torch.device(setup.device)), image, strength


def perform(setup: Setup, run: Run) -> tuple[dict[str, Any], np.ndarray]:
    """Do one run: its row for results.csv, and its output image, uint8 (H, W, 3)."""
    from kdiff_differential.core.samplers import OWN_STEPS
    from kdiff_differential.core.sampling import differential_edit

    model, image, strength = prepared(setup)
    counter = CountingDenoiser(model.denoiser)
    with one_thread():
        start = time.perf_counter()
        edit = differential_edit(
            counter,
            model.latent,
            strength,
            sampler=run.sampler,
            steps=None if run.sampler in OWN_STEPS else run.steps,  # compare.sweep warns once
            seed=run.seed,
            strength=run.strength,
            clock=run.clock,
            release=run.release,
            schedule=getattr(model, "schedule", "karras"),  # flow models: their own, from t = 1
            extra_args=model.extra_args("", "", 1.0, change_map=strength),
        )
        out = model.decode(edit.result)
        seconds = time.perf_counter() - start
    row = {**asdict(run), "nfe": counter.calls, "seconds": seconds}
    row.update(image_metrics(out, image, strength.numpy()))
    return row, out
