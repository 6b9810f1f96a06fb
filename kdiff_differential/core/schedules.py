"""Noise schedules by name: what sigmas a sampler runs.

``karras`` and ``exponential`` are k-diffusion's; ``model`` is the model's own
(``get_sigmas``: a flow model's shifted schedule from t = 1); ComfyUI's scheduler names
(``simple``, ``sgm_uniform``, ``normal``, ``ddim_uniform``, ``beta``,
``linear_quadratic``, ``kl_optimal``) are computed as ComfyUI computes them from a
model's discrete training levels, so that a ComfyUI user's schedule carries over
(checked against ComfyUI's own numbers in ``tests/test_comfyui_golden.py``).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn

from ..choices import COMFYUI_SCHEDULES, SCHEDULES
from .clocks import find_attribute

__all__ = ["SCHEDULES", "make_sigmas"]


def make_sigmas(denoiser: nn.Module, steps: int, schedule: str = "karras", denoise: float = 1.0) -> Tensor:
    """The schedule for ``steps`` steps, descending, ending in 0: (steps + 1,) float32
    (ComfyUI's ``ddim_uniform`` and ``beta`` may give fewer levels, as in ComfyUI).

    ``denoiser`` is a k-diffusion denoiser (``CompVisDenoiser``, ...), or a wrapper with
    one as ``inner_model``; its ``sigma_min``/``sigma_max`` bound the schedule, and
    ComfyUI's names also read its training levels (``sigmas``). A flow model's ``model``
    schedule starts at inf (t = 1). With ``denoise`` < 1 the schedule is that of
    ``steps / denoise`` steps, of which the last ``steps`` are kept (img2img's partial
    denoising, as ComfyUI does it).
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
    elif schedule == "model":
        sigmas = find_attribute(denoiser, "get_sigmas")(total)
    else:
        sigmas = comfyui_schedule(schedule, _training_levels(denoiser, schedule), total)
    return sigmas[-(steps + 1) :].float().cpu()


def _training_levels(denoiser: nn.Module, schedule: str) -> Tensor:
    levels = find_attribute(denoiser, "sigmas")
    if find_attribute(denoiser, "log_sigmas") is None or not isinstance(levels, Tensor):
        raise ValueError(
            f"schedule {schedule!r} is ComfyUI's, computed from a model's discrete training levels, which this "
            f"model has not; use karras, exponential or model"
        )
    return levels.detach().float().cpu()


def comfyui_schedule(name: str, levels: Tensor, steps: int) -> Tensor:
    """ComfyUI's scheduler ``name`` for ``steps`` steps over a model's training levels
    ``levels`` (ascending, float32, as ComfyUI's ``model_sampling.sigmas``)."""
    if name not in COMFYUI_SCHEDULES:
        raise ValueError(f"unknown ComfyUI schedule {name!r}; these: {', '.join(COMFYUI_SCHEDULES)}")
    schedule: Callable[[Tensor, int], Tensor] = _COMFYUI[name]
    return schedule(levels, steps)


def _with_zero(values: list[float]) -> Tensor:
    return torch.tensor([*values, 0.0], dtype=torch.float32)


def _simple(levels: Tensor, steps: int) -> Tensor:
    """Every (len / steps)-th training level from the top, truncated to an index."""
    stride = len(levels) / steps
    return _with_zero([float(levels[-(1 + int(i * stride))]) for i in range(steps)])


def _ddim_uniform(levels: Tensor, steps: int) -> Tensor:
    """Every (len // steps)-th training level from index 1 up, then reversed; a level-1
    that is (nearly) 0 takes the place of the final 0."""
    zero_first = math.isclose(float(levels[1]), 0, abs_tol=1e-5)
    stride = max(len(levels) // (steps + 1 if zero_first else steps), 1)
    picked = [float(level) for level in levels[1::stride]]
    return torch.tensor(([] if zero_first else [0.0]) + picked, dtype=torch.float32).flip(0)


def _nearest_index(levels: Tensor, sigma: Tensor) -> Tensor:
    return (sigma.log() - levels.log()[:, None]).abs().argmin(dim=0).view(sigma.shape)


def _level_at(levels: Tensor, t: Tensor) -> Tensor:
    """The training level at fractional index t: log-linear between neighbours."""
    log_levels = levels.log()
    t = t.float().clamp(0, len(levels) - 1)
    w = t.frac()
    return ((1 - w) * log_levels[t.floor().long()] + w * log_levels[t.ceil().long()]).exp()


def _normal(levels: Tensor, steps: int, sgm: bool = False) -> Tensor:
    """Evenly spaced timesteps from sigma_max's to sigma_min's (nearest) index. sgm: steps
    + 1 of them with the last dropped and a 0 appended; else ``steps`` of them and a 0,
    or steps + 1 with no 0 when sigma_min's level is (nearly) 0."""
    start, end = _nearest_index(levels, levels[-1]), _nearest_index(levels, levels[0])
    if sgm:
        return _with_zero(_level_at(levels, torch.linspace(start, end, steps + 1)[:-1]).tolist())
    if math.isclose(float(_level_at(levels, end)), 0, abs_tol=1e-5):
        return _level_at(levels, torch.linspace(start, end, steps + 1))
    return _with_zero(_level_at(levels, torch.linspace(start, end, steps)).tolist())


def _beta(levels: Tensor, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Training indices at the quantiles of a Beta(0.6, 0.6), rounded, repeats dropped."""
    import numpy as np
    from scipy.stats import beta as beta_distribution

    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    indices = np.rint(beta_distribution.ppf(quantiles, alpha, beta) * (len(levels) - 1))
    kept = [index for i, index in enumerate(indices) if i == 0 or index != indices[i - 1]]
    return _with_zero([float(levels[int(index)]) for index in kept])


def _linear_quadratic(levels: Tensor, steps: int, threshold_noise: float = 0.025) -> Tensor:
    """Mochi's schedule in t = sigma / sigma_max: linear to ``threshold_noise`` over the
    first half of the steps, then quadratic to 1."""
    if steps == 1:
        return torch.tensor([1.0, 0.0]) * levels[-1]
    linear_steps = steps // 2
    linear = [i * threshold_noise / linear_steps for i in range(linear_steps)]
    quadratic_steps = steps - linear_steps
    excess = linear_steps - threshold_noise * steps
    quadratic_coef = excess / (linear_steps * quadratic_steps**2)
    linear_coef = threshold_noise / linear_steps - 2 * excess / quadratic_steps**2
    const = quadratic_coef * linear_steps**2
    quadratic = [quadratic_coef * i**2 + linear_coef * i + const for i in range(linear_steps, steps)]
    return torch.tensor([1.0 - t for t in linear + quadratic + [1.0]]) * levels[-1]


def _kl_optimal(levels: Tensor, steps: int) -> Tensor:
    """tan of evenly spaced arctangents from sigma_max's to sigma_min's."""
    if steps < 2:
        raise ValueError("schedule 'kl_optimal' needs at least 2 steps (ComfyUI's divides by steps - 1)")
    fraction = torch.arange(steps, dtype=torch.float).div_(steps - 1)
    sigmas = fraction.new_zeros(steps + 1)
    sigmas[:-1] = (fraction * math.atan(float(levels[0])) + (1 - fraction) * math.atan(float(levels[-1]))).tan_()
    return sigmas


_COMFYUI: dict[str, Callable[[Tensor, int], Tensor]] = {
    "simple": _simple,
    "sgm_uniform": lambda levels, steps: _normal(levels, steps, sgm=True),
    "normal": _normal,
    "ddim_uniform": _ddim_uniform,
    "beta": _beta,
    "linear_quadratic": _linear_quadratic,
    "kl_optimal": _kl_optimal,
}
