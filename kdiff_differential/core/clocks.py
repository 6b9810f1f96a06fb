"""Clocks: the normalised time tau of a model call's noise level.

A clock turns the sigma of a model call into tau: 1 at the start of the schedule, 0
at its end, growing with sigma. A pixel of strength s is free at a call when
``s >= tau(sigma)`` (see :mod:`.release`). Each clock is a small module whose
constants are buffers, so that it moves with the wrapper that holds it.

The clocks (the ``clock=`` argument of :class:`DifferentialDenoiser`):

``"timestep"``
    tau is linear in the model's own timestep: ``model.sigma_to_t`` when the model
    (or a wrapper's ``inner_model``) has one, else log sigma. ComfyUI's clock is this
    one on the nearest training timestep (:func:`model_timestep`, ``compat="comfyui"``).
``"sigma"``
    tau is linear in log sigma.
``"step"``
    a step-index ramp: step i of N has tau = 1 - i/N, interpolated in log sigma for
    calls between two schedule entries. The diffusers pipelines index steps too, but
    free a pixel a call earlier or later than this (``compat="diffusers"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor, nn

from ..choices import CLOCKS



def inner_models(model: Any) -> Iterator[Any]:
    """``model``, ``model.inner_model``, and so on down the chain.

    Guidance wrappers keep the real denoiser as ``inner_model`` (k-diffusion's own
    convention), so the model's clock is found through them.
    """
    seen = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        yield model
        model = getattr(model, "inner_model", None)


def find_attribute(model: Any, name: str) -> Any:
    """The first ``name`` found down ``model``'s :func:`inner_models` chain; ``None`` when absent."""
    for inner in inner_models(model):
        value = getattr(inner, name, None)
        if value is not None:
            return value
    return None


@dataclass(frozen=True)
class Span:
    """The noise levels the ramp covers: tau is 1 at ``sigma_from`` and 0 at ``sigma_to``.

    ``sigmas`` is the full schedule (descending, possibly ending in 0) when one was
    given, ``None`` for the adaptive samplers, which are given only a sigma range.
    ``sigma_last`` is the lowest non-zero level a sampler reaches: the schedule's last
    non-zero level, or the range's ``sigma_min``.
    """

    sigma_from: float
    sigma_to: float
    sigmas: Optional[Tensor]
    sigma_last: float = 0.0


def _as_float(value: Any, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a single number, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    return float(value)


def check_sigmas(sigmas: Any) -> Tensor:
    """Validate a k-diffusion schedule: 1-D, finite, non-negative, strictly descending, 2+ entries.

    The first level alone may be inf: a flow model's schedule from t = 1 (see models/flow.py).
    """
    if not isinstance(sigmas, Tensor):
        raise TypeError(f"sigmas must be a torch.Tensor (the sampler's schedule), got {type(sigmas).__name__}")
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be 1-D, got shape {tuple(sigmas.shape)}")
    if len(sigmas) < 2:
        raise ValueError(f"sigmas must hold at least two noise levels, got {len(sigmas)}")
    if not sigmas.is_floating_point():
        raise TypeError(f"sigmas must be a float tensor, got {sigmas.dtype}")
    values = sigmas.detach().double().cpu()
    if not torch.isfinite(values[1:]).all() or torch.isnan(values[0]) or values[0] == -float("inf"):
        raise ValueError("sigmas must be finite (only the first may be inf, a flow model's t = 1), got NaN or inf")
    if (values < 0).any():
        raise ValueError(f"sigmas must be non-negative, got a minimum of {values.min().item():g}")
    if not (values[1:] < values[:-1]).all():
        raise ValueError("sigmas must be strictly descending, as a sampler's schedule is")
    return sigmas


def make_span(
    sigmas: Optional[Tensor] = None,
    sigma_min: Any = None,
    sigma_max: Any = None,
    model_sigma_min: Any = None,
    *,
    range_ends_at_model_floor: bool = False,
) -> Span:
    """The span of a schedule, or of an adaptive sampler's ``(sigma_min, sigma_max)`` range.

    ``sigma_to`` is the larger of the schedule's last level and the model's own
    ``sigma_min`` when the model has one, else the schedule's last non-zero level.
    ``range_ends_at_model_floor`` reads a range as ComfyUI does: it converts the full
    schedule, ending in 0, for dpm_fast/dpm_adaptive, so the ramp ends at the model's
    sigma_min.
    """
    if sigmas is not None:
        if sigma_min is not None or sigma_max is not None:
            raise ValueError("give either sigmas= (a schedule) or sigma_min=/sigma_max= (adaptive samplers), not both")
        sigmas = check_sigmas(sigmas)
        levels = sigmas.detach().cpu()
        sigma_from, last = levels[0].item(), levels[-1].item()
        last_nonzero = levels[levels > 0][-1].item()
    elif sigma_min is not None and sigma_max is not None:
        sigma_from = _as_float(sigma_max, "sigma_max")
        last = last_nonzero = _as_float(sigma_min, "sigma_min")
        if not 0 < last < sigma_from <= float("inf"):
            raise ValueError(
                f"sigma_min and sigma_max must satisfy 0 < sigma_min < sigma_max <= inf, "
                f"got sigma_min={last:g}, sigma_max={sigma_from:g}"
            )
    else:
        raise ValueError(
            "give the schedule the sampler will run as sigmas=, or sigma_min= and sigma_max= "
            "for the adaptive samplers (dpm_fast, dpm_adaptive)"
        )
    if model_sigma_min is not None:
        floor = _as_float(model_sigma_min, "the model's sigma_min")
        sigma_to = floor if range_ends_at_model_floor and sigmas is None else max(last, floor)
    else:
        sigma_to = last_nonzero
    return Span(sigma_from=sigma_from, sigma_to=sigma_to, sigmas=sigmas, sigma_last=last_nonzero)


def _discrete_schedule(model: Any) -> Optional[Any]:
    """The k-diffusion ``DiscreteSchedule`` (``CompVisDenoiser``, ...) down ``model``'s
    chain whose ``sigma_to_t`` is k-diffusion's own, else ``None``. Recognised by that
    method's name, so that finding it imports nothing."""
    for inner in inner_models(model):
        method = getattr(type(inner), "sigma_to_t", None)
        if getattr(method, "__qualname__", "") == "DiscreteSchedule.sigma_to_t" and hasattr(inner, "log_sigmas"):
            return inner
    return None


# Up to this many sigmas (a model call's batch) the (levels, n) table is cheaper than the search.
_SMALL = 64


class DiscreteTimestep(nn.Module):
    """k-diffusion's ``DiscreteSchedule.sigma_to_t`` (interpolated, or the nearest
    training level when ``quantize``), value for value, by a binary search.

    k-diffusion compares every sigma with all 1000 training levels (a (1000, n) table);
    for many sigmas (the release boundaries' search) one ``searchsorted`` finds the same
    neighbours, and the arithmetic after it is k-diffusion's, so the result is
    bit-identical (tested); for a model call's few sigmas the table itself takes fewer
    kernels. It keeps its own copy of the levels, which moves with the wrapper.
    """

    log_sigmas: Tensor

    def __init__(self, log_sigmas: Tensor, quantize: bool) -> None:
        super().__init__()
        self.register_buffer("log_sigmas", log_sigmas.detach().clone())
        self.quantize = bool(quantize)

    def forward(self, sigma: Tensor) -> Tensor:
        log_sigma = sigma.log()
        if sigma.numel() <= _SMALL:
            return self._by_table(log_sigma).view(sigma.shape)
        levels = self.log_sigmas.to(torch.promote_types(self.log_sigmas.dtype, log_sigma.dtype))
        last = len(levels) - 1
        if self.quantize:
            # The nearest level; on a tie the lower one, as argmin's first index.
            above = torch.searchsorted(levels, log_sigma.contiguous()).clamp(max=last)
            below = (above - 1).clamp(min=0)
            pick = (log_sigma - levels[below]).abs() <= (log_sigma - levels[above]).abs()
            index = torch.where(pick, below, above)
            # argmin over all-inf distances (sigma = inf) is the first level.
            return torch.where(log_sigma == float("inf"), 0, index).view(sigma.shape)
        low_idx = (torch.searchsorted(levels, log_sigma.contiguous(), right=True) - 1).clamp(0, last - 1)
        high_idx = low_idx + 1
        low, high = self.log_sigmas[low_idx], self.log_sigmas[high_idx]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return ((1 - w) * low_idx + w * high_idx).view(sigma.shape)


    def _by_table(self, log_sigma: Tensor) -> Tensor:
        """k-diffusion's own arithmetic, every level against every sigma: fewer kernels
        than the search for the few sigmas of a model call."""
        levels = self.log_sigmas  # a buffer read costs a module lookup: once
        dists = log_sigma - levels[:, None]
        if self.quantize:
            return dists.abs().argmin(dim=0)
        low_idx = dists.ge(0).cumsum(dim=0).argmax(dim=0).clamp(max=len(levels) - 2)
        low, high = levels[low_idx], levels[low_idx + 1]
        w = ((low - log_sigma) / (low - high)).clamp(0, 1)
        return (1 - w) * low_idx + w * (low_idx + 1)


def model_timestep(model: Any, nearest: bool = False) -> Optional[Callable[[Tensor], Tensor]]:
    """The model's timestep ``t(sigma)``, found down its :func:`inner_models` chain.

    A k-diffusion ``DiscreteSchedule`` gives a :class:`DiscreteTimestep` (its own
    ``quantize``; with ``nearest``, the nearest training level whatever that is:
    ComfyUI's ``model_sampling.timestep``); another model its own ``sigma_to_t``;
    ``None`` when there is none.
    """
    schedule = _discrete_schedule(model)
    if schedule is not None:
        return DiscreteTimestep(schedule.log_sigmas, quantize=nearest or schedule.quantize)
    return find_attribute(model, "sigma_to_t")


class Clock(nn.Module):
    """tau(sigma), (n,) -> (n,): 1 at the span's start, 0 at its end, never falling as
    sigma grows. Its constants are buffers, so it moves (device and dtype) with the
    wrapper that holds it; tau is computed in the buffers' dtype."""

    def forward(self, sigma: Tensor) -> Tensor:  # pragma: no cover - each clock has its own
        raise NotImplementedError


class TimestepClock(Clock):
    """tau linear in the model's timestep ``t(sigma)``."""

    t_to: Tensor
    t_range: Tensor

    def __init__(self, span: Span, timestep: Callable[[Tensor], Tensor], dtype: torch.dtype, device: Any = None) -> None:
        super().__init__()
        self.timestep = timestep
        # A module's forward directly: the module call's hooks cost more than t(sigma) itself.
        self._timestep = timestep.forward if isinstance(timestep, nn.Module) else timestep
        ends = timestep(torch.tensor([span.sigma_from, span.sigma_to], dtype=dtype, device=device)).to(dtype)
        self.register_buffer("t_to", ends[1].clone())
        self.register_buffer("t_range", ends[0] - ends[1])

    def forward(self, sigma: Tensor) -> Tensor:
        t_to = self.t_to
        return (self._timestep(sigma.to(t_to.dtype)).to(t_to.dtype) - t_to) / self.t_range


class LogSigmaClock(Clock):
    """tau linear in log sigma."""

    sigma_to: Tensor
    log_range: Tensor

    def __init__(self, span: Span, dtype: torch.dtype, device: Any = None) -> None:
        super().__init__()
        if span.sigma_from == float("inf"):
            raise ValueError(
                "the schedule starts at sigma = inf (a flow model's t = 1), where log sigma has no finite "
                "range: use clock='timestep' or 'step'"
            )
        sigma_from = torch.tensor(span.sigma_from, dtype=dtype, device=device)
        self.register_buffer("sigma_to", torch.tensor(span.sigma_to, dtype=dtype, device=device))
        self.register_buffer("log_range", torch.log(sigma_from / self.sigma_to))

    def forward(self, sigma: Tensor) -> Tensor:
        return torch.log(sigma.to(self.sigma_to.dtype) / self.sigma_to) / self.log_range


class StepClock(Clock):
    """The step-index ramp: step i of N has tau = 1 - i/N, interpolated in log
    sigma between schedule levels."""

    knots: Tensor
    values: Tensor

    def __init__(self, sigmas: Tensor) -> None:
        super().__init__()
        n = len(sigmas) - 1
        levels = 1 - torch.arange(n + 1, dtype=sigmas.dtype, device=sigmas.device) / n
        nonzero = sigmas > 0
        knots, values = sigmas[nonzero].flip(0), levels[nonzero].flip(0)  # ascending
        if len(knots) == 1:
            # A single step from sigma to 0: add a level one e-fold below, at the next step's tau.
            knots = torch.cat([knots / torch.e, knots])
            values = torch.cat([values - 1 / n, values])
        self.register_buffer("knots", knots)
        self.register_buffer("values", values)

    def forward(self, sigma: Tensor) -> Tensor:
        knots, values = self.knots, self.values
        sigma = sigma.to(knots.dtype)
        i = (torch.searchsorted(knots, sigma, right=True) - 1).clamp(0, len(knots) - 2)
        low, high = knots[i], knots[i + 1]
        # log(sigma / low) is exactly 0 at a schedule level, so tau there is exactly 1 - i/N.
        w = torch.log(sigma / low) / torch.log(high / low)
        # A flow schedule's first level is inf (t = 1): no log-interpolation reaches it,
        # so tau holds the second level's value up to it and is 1 there.
        w = torch.where(torch.isinf(high), (sigma >= high).to(w.dtype), w)
        between = values[i] + w * (values[i + 1] - values[i])
        # Below the last non-zero level tau stays at that level's value; above the first
        # it goes on rising along the first step's slope.
        return torch.where(sigma < knots[0], values[0], between)


def make_clock(
    name: str,
    span: Span,
    timestep: Optional[Callable[[Tensor], Tensor]] = None,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> Clock:
    """The clock ``name`` over ``span``; see the module docstring. ``timestep`` is the
    model's ``t(sigma)`` (:func:`model_timestep`), for the timestep clock; without one
    it falls back to log sigma. tau is evaluated in ``dtype``, which should be the
    dtype the model calls' sigmas are compared in."""
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {', '.join(map(repr, CLOCKS))}, got {name!r}")
    if name == "step":
        if span.sigmas is None:
            raise ValueError(
                "clock='step' needs the schedule as sigmas=; the adaptive samplers have no "
                "steps, use clock='timestep' or 'sigma' with sigma_min=/sigma_max="
            )
        return StepClock(span.sigmas.detach().to(device=device, dtype=dtype))
    if not span.sigma_to < span.sigma_from:
        raise ValueError(
            f"the schedule spans no noise range (first level {span.sigma_from:g}, last counted level "
            f"{span.sigma_to:g}); give at least two non-zero sigmas, or use clock='step'"
        )
    if name == "timestep" and timestep is not None:
        return TimestepClock(span, timestep, dtype, device)
    return LogSigmaClock(span, dtype, device)
