"""One Differential Diffusion edit with a k-diffusion sampler, start to finish.

The steps every model shares, the built-in one and Stable Diffusion alike: the noise
schedule, the :class:`DifferentialDenoiser` around the model, the sampler by its short
name, the seeds. k-diffusion is imported inside the functions, so that importing the
package stays light.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..errors import InputError
from .clocks import find_attribute
from .denoiser import DifferentialDenoiser
from .samplers import DEFAULT_STEPS, MAX_SEED, Sampler, clock_problem, ignored_steps, sampler_named
from .schedules import make_sigmas


@dataclass
class SamplerRun:
    """What one sampler run gives back: the result and what is needed to explain it."""

    result: Tensor  # the edited latent, (B, C, [F,] H, W), the input latent's dtype
    wrapper: DifferentialDenoiser  # the wrapper the sampler ran; wrapper.mask(sigma) is the release mask
    step_sigmas: list[float] = field(default_factory=list)  # the sigma of each step, in order


def differential_edit(
    denoiser: nn.Module,
    latent: Tensor,
    change_map: Any,
    *,
    sampler: str = "dpmpp_2m",
    steps: Optional[int] = None,
    schedule: str = "karras",
    denoise: float = 1.0,
    seed: int = 0,
    strength: float = 1.0,
    clock: str = "timestep",
    release: str = "faithful",
    extra_args: Optional[dict[str, Any]] = None,
    progress: bool = False,
    compat: Optional[str] = None,
    frames_per_latent: int = 4,
) -> SamplerRun:
    """Edit ``latent`` (B, C, H, W), or a video's (B, C, F, H, W), with per-pixel strength
    ``change_map`` (1 = change).

    ``denoiser`` is a k-diffusion discrete-schedule denoiser; ``extra_args`` go to it at
    every call (``cond``, guidance settings). ``change_map`` is anything
    :class:`DifferentialDenoiser` takes. ``sampler`` is a k-diffusion short name or an
    A1111-style one (``"DPM++ 2M"``). ``seed`` fixes the wrapper's noise and the
    sampler's own noise, so the same arguments give the same result. ``steps`` defaults
    to 20; ``dpm_adaptive`` chooses its own and warns (once) when given a step count.
    ``release`` defaults to ``"faithful"``, told the sampler (see
    :class:`DifferentialDenoiser`). ``compat`` goes to the wrapper (``"diffusers"``: the diffusers pipelines' rule), and so
    does ``frames_per_latent`` (a video latent's map per frame, see :class:`DifferentialDenoiser`).
    """
    chosen, _ = sampler_named(sampler)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed}: out of range; give a whole number in [0, {MAX_SEED}]")
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args must be a dict of the denoiser's keyword arguments, got {type(extra_args).__name__}")
    ignored = ignored_steps(chosen, steps)
    if ignored:
        warnings.warn(ignored, UserWarning, stacklevel=2)
    if steps is None or chosen.own_steps:
        steps = DEFAULT_STEPS  # for dpm_adaptive, only where the schedule starts (denoise < 1)
    problem = clock_problem(chosen, clock)
    if problem:
        raise ValueError(problem)
    # The ancestral and SDE samplers draw from the global generator (Brownian trees seed from it too).
    torch.manual_seed(seed)
    sigmas = make_sigmas(denoiser, steps, schedule, denoise).to(device=latent.device, dtype=latent.dtype)
    _check_range_left(denoiser, sigmas, clock, steps, denoise)
    step_sigmas: list[float] = []

    def record(info: dict[str, Any]) -> None:
        step_sigmas.append(float(info["sigma"]))

    run: dict[str, Any] = dict(extra_args=extra_args or {}, callback=record, disable=not progress)
    with torch.no_grad():
        dd = build_wrapper(
            denoiser, latent, change_map, chosen, sigmas,
            generator=torch.Generator(device=latent.device).manual_seed(seed), strength=strength, clock=clock, release=release,
            compat=compat, frames_per_latent=frames_per_latent,
        )
        # A flow model's schedule from t = 1 starts at sigma = inf: its first step is taken
        # by the wrapper (see models/flow.py), the sampler runs from the second level on.
        if torch.isinf(sigmas[0]):
            step_sigmas.append(float(sigmas[0]))
            x = dd.start_from_noise(float(sigmas[1]), **run["extra_args"])
            sigmas = sigmas[1:]
        else:
            x = dd.noisy_latent()
        x = call_sampler(chosen, dd, x, sigmas, run)
    return SamplerRun(result=x, wrapper=dd, step_sigmas=step_sigmas)


def _check_range_left(denoiser: nn.Module, sigmas: Tensor, clock: str, steps: int, denoise: float) -> None:
    floor = find_attribute(denoiser, "sigma_min")
    if clock != "step" and floor is not None and float(sigmas[0]) <= float(floor) * (1 + 1e-4):
        # Partial denoising keeps the schedule's last steps; few enough, and only the step
        # from the model's sigma_min (karras: to rounding) to 0 is left: no noise range
        # for a clock to ramp over.
        raise InputError(
            f"steps={steps} at denoise={denoise:g} leaves only the step from the model's sigma_min "
            f"({float(floor):g}) to 0, which changes nothing; give more steps or a larger denoise"
        )


def build_wrapper(
    denoiser: nn.Module, latent: Tensor, change_map: Any, sampler: Sampler, sigmas: Tensor, **settings: Any
) -> DifferentialDenoiser:
    """The :class:`DifferentialDenoiser` for ``sampler`` over the schedule ``sigmas``: the
    schedule itself, or for a range sampler the range from its first level to the
    model's sigma_min. ``settings`` are the wrapper's keyword arguments; the wrapper is
    told the sampler, which the faithful release adapts to."""
    if sampler.takes_range:
        sigma_min = float(find_attribute(denoiser, "sigma_min"))
        return DifferentialDenoiser(denoiser, latent, change_map, sigma_min=sigma_min, sigma_max=float(sigmas[0]),
                                    sampler=sampler.name, **settings)
    return DifferentialDenoiser(denoiser, latent, change_map, sigmas=sigmas, sampler=sampler.name, **settings)


def call_sampler(sampler: Sampler, dd: DifferentialDenoiser, x: Tensor, sigmas: Tensor, run: dict[str, Any]) -> Tensor:
    """k-diffusion's ``sample_<name>`` from ``x`` over ``sigmas`` (a range sampler: from
    ``sigmas[0]`` down to the wrapper's ``sigma_min``, then :meth:`~DifferentialDenoiser.finish`),
    and the schedules k-diffusion cannot take: none left (a one-step flow schedule ends
    with its start step), and one step to 0 for a sampler whose first step to 0 fails,
    which is x = denoised there as in every sampler. ``run``: the sampler's keyword
    arguments (``extra_args``, ``callback``, ``disable``)."""
    import k_diffusion as K

    if len(sigmas) < 2 and not sampler.takes_range:
        return x
    if sampler.takes_range:
        sigma_min, sigma_max = dd.span.sigma_last, float(sigmas[0])
        if sigma_max <= 0:  # a one-step flow schedule ended with its start step
            return x
        if sampler.own_steps:
            x = K.sampling.sample_dpm_adaptive(dd, x, sigma_min, sigma_max, **run)
        else:
            x = K.sampling.sample_dpm_fast(dd, x, sigma_min, sigma_max, len(sigmas) - 1, **run)
        return dd.finish(x, **run["extra_args"])
    if sampler.first_step_to_zero_fails and len(sigmas) == 2 and sigmas[-1] == 0:
        denoised = dd(x, sigmas[0] * x.new_ones([x.shape[0]]), **run["extra_args"])
        run["callback"]({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
        return denoised
    return getattr(K.sampling, f"sample_{sampler.name}")(dd, x, sigmas, **run)
