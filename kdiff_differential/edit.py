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

from .clocks import find_attribute
from .denoiser import DifferentialDenoiser
from .errors import InputError

SAMPLERS = (
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "dpm_fast",
    "dpm_adaptive",
)
# These two take a sigma range instead of a schedule, and stop at sigma_min, not 0.
RANGE_SAMPLERS = ("dpm_fast", "dpm_adaptive")
# This one chooses its own steps: a step count asked of it is ignored.
OWN_STEPS = ("dpm_adaptive",)
DEFAULT_STEPS = 20
SCHEDULES = ("karras", "exponential", "model")


def make_sigmas(denoiser: nn.Module, steps: int, schedule: str = "karras", denoise: float = 1.0) -> Tensor:
    """The schedule for ``steps`` steps, descending, ending in 0: (steps + 1,) float32.

    ``denoiser`` is a k-diffusion discrete-schedule denoiser (``CompVisDenoiser``,
    ...), or a wrapper with one as ``inner_model``; its ``sigma_min``/``sigma_max``
    bound the schedule. A flow model's ``model`` schedule starts at inf (t = 1). With ``denoise`` < 1 the
    schedule is that of ``steps / denoise`` steps, of which the last ``steps`` are kept
    (img2img's partial denoising, as ComfyUI does it).
    """
    import k_diffusion as K

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; schedules: {', '.join(SCHEDULES)}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if isinstance(denoise, bool) or not isinstance(denoise, (int, float)) or not 0 < denoise <= 1:
        raise ValueError(f"denoise must be a number in (0, 1], got {denoise!r}")
    total = steps if denoise >= 1 else int(steps / denoise)
    sigma_min, sigma_max = float(find_attribute(denoiser, "sigma_min")), float(find_attribute(denoiser, "sigma_max"))
    if schedule != "model" and sigma_max == float("inf"):
        raise ValueError(f"this model's schedule starts at t = 1 (sigma = inf), which a {schedule} schedule cannot; use schedule='model'")
    if schedule == "karras":
        sigmas = K.sampling.get_sigmas_karras(total, sigma_min, sigma_max)
    elif schedule == "exponential":
        sigmas = K.sampling.get_sigmas_exponential(total, sigma_min, sigma_max)
    else:
        sigmas = find_attribute(denoiser, "get_sigmas")(total)
    return sigmas[-(steps + 1) :].float().cpu()


@dataclass
class Edit:
    """What a run gives back: the result and what is needed to explain it."""

    result: Tensor  # the edited latent, (B, C, H, W), the input latent's dtype
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
    threshold: str = "timestep",
    release: str = "smooth",
    extra_args: Optional[dict[str, Any]] = None,
    progress: bool = False,
) -> Edit:
    """Edit ``latent`` (B, C, H, W) with per-pixel strength ``change_map`` (1 = change).

    ``denoiser`` is a k-diffusion discrete-schedule denoiser; ``extra_args`` go to it at
    every call (``cond``, guidance settings). ``change_map`` is anything
    :class:`DifferentialDenoiser` takes. ``seed`` fixes the wrapper's noise and the
    sampler's own noise, so the same arguments give the same result. ``steps`` defaults
    to 20; ``dpm_adaptive`` chooses its own and warns (once) when given a step count.
    """
    import k_diffusion as K

    from .models.flow import start_from_noise

    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; samplers: {', '.join(SAMPLERS)}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if extra_args is not None and not isinstance(extra_args, dict):
        raise TypeError(f"extra_args must be a dict of the denoiser's keyword arguments, got {type(extra_args).__name__}")
    if sampler in OWN_STEPS and steps is not None:
        warnings.warn(f"{sampler} chooses its own steps: steps={steps} is ignored", UserWarning, stacklevel=2)
    if steps is None or sampler in OWN_STEPS:
        steps = DEFAULT_STEPS  # for dpm_adaptive, only where the schedule starts (denoise < 1)
    # The ancestral and SDE samplers draw from the global generator (Brownian trees seed from it too).
    torch.manual_seed(seed)
    generator = torch.Generator(device=latent.device).manual_seed(seed)
    sigmas = make_sigmas(denoiser, steps, schedule, denoise).to(device=latent.device, dtype=latent.dtype)
    floor = find_attribute(denoiser, "sigma_min")
    if threshold != "step" and floor is not None and float(sigmas[0]) <= float(floor) * (1 + 1e-4):
        # Partial denoising keeps the schedule's last steps; few enough, and only the step
        # from the model's sigma_min (karras: to rounding) to 0 is left: no noise range
        # for a clock to ramp over.
        raise InputError(
            f"steps={steps} at denoise={denoise:g} leaves only the step from the model's sigma_min "
            f"({float(floor):g}) to 0, which changes nothing; give more steps or a larger denoise"
        )
    settings = dict(generator=generator, strength=strength, threshold=threshold, release=release)
    step_sigmas: list[float] = []

    def record(info: dict[str, Any]) -> None:
        step_sigmas.append(float(info["sigma"]))

    run = dict(extra_args=extra_args or {}, callback=record, disable=not progress)
    # A flow model's schedule from t = 1 starts at sigma = inf: its first step is taken
    # here (see models/flow.py), the sampler runs from the second level on.
    from_noise = bool(torch.isinf(sigmas[0]))
    if from_noise:
        step_sigmas.append(float(sigmas[0]))
    with torch.no_grad():
        if sampler in RANGE_SAMPLERS:
            sigma_min, sigma_max = float(find_attribute(denoiser, "sigma_min")), float(sigmas[0])
            dd = DifferentialDenoiser(denoiser, latent, change_map, sigma_min=sigma_min, sigma_max=sigma_max, **settings)
            if from_noise:
                sigma_max = float(sigmas[1])
                x = start_from_noise(dd, sigma_max, run["extra_args"])
            else:
                x = dd.noisy_latent()
            if sigma_max > 0:  # else a one-step flow schedule ended with its start step
                if sampler == "dpm_fast":
                    x = K.sampling.sample_dpm_fast(dd, x, sigma_min, sigma_max, steps, **run)
                else:
                    x = K.sampling.sample_dpm_adaptive(dd, x, sigma_min, sigma_max, **run)
                x = dd.finish(x, **run["extra_args"])
        else:
            dd = DifferentialDenoiser(denoiser, latent, change_map, sigmas=sigmas, **settings)
            if from_noise:
                x, run_sigmas = start_from_noise(dd, dd.sigmas[1], run["extra_args"]), dd.sigmas[1:]
            else:
                x, run_sigmas = dd.noisy_latent(), dd.sigmas
            x = _sample(sampler, dd, x, run_sigmas, run)
    return Edit(result=x, wrapper=dd, step_sigmas=step_sigmas)


# k-diffusion 0.1.1.post1's DPM++ 2M SDE and 3M SDE read their step size before they set
# it when their first step already goes to 0 (UnboundLocalError): a one-step schedule.
FIRST_STEP_TO_ZERO_FAILS = ("dpmpp_2m_sde", "dpmpp_3m_sde")


def _sample(sampler: str, dd: nn.Module, x: Tensor, sigmas: Tensor, run: dict[str, Any]) -> Tensor:
    """k-diffusion's ``sample_<sampler>`` over ``sigmas``, and the two schedules it cannot
    take: none left (a one-step flow schedule ends with its start step), and one step to
    0 for :data:`FIRST_STEP_TO_ZERO_FAILS`, which is x = denoised there as in every sampler."""
    import k_diffusion as K

    if len(sigmas) < 2:
        return x
    if sampler in FIRST_STEP_TO_ZERO_FAILS and len(sigmas) == 2 and sigmas[-1] == 0:
        denoised = dd(x, sigmas[0] * x.new_ones([x.shape[0]]), **run["extra_args"])
        run["callback"]({"x": x, "i": 0, "sigma": sigmas[0], "sigma_hat": sigmas[0], "denoised": denoised})
        return denoised
    return getattr(K.sampling, f"sample_{sampler}")(dd, x, sigmas, **run)
