"""Threshold clocks: at which noise level a pixel of a given strength is released.

A clock turns the sigma of a model call into normalised time tau: 1 at the start of
the schedule, 0 at its end, growing with sigma. A pixel of strength s is free at a
call when ``s >= tau(sigma)``. Because tau never falls as sigma grows, that is the
same as ``sigma <= release_sigma(s)``. :func:`release_sigmas` finds that sigma once,
when the wrapper is built, so that a model call costs a single comparison.

The clocks (the ``threshold=`` argument of :class:`DifferentialDenoiser`):

``"timestep"``
    tau is linear in the model's own timestep: ``model.sigma_to_t`` when the model
    (or a wrapper's ``inner_model``) has one, else log sigma. ComfyUI's clock is this
    one on the nearest training timestep (:func:`nearest_timestep`, ``compat="comfyui"``).
``"sigma"``
    tau is linear in log sigma.
``"step"``
    the paper's step-index ramp: step i of N has tau = 1 - i/N, interpolated in log
    sigma for calls between two schedule entries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import Tensor

CLOCKS = ("timestep", "step", "sigma")

Tau = Callable[[Tensor], Tensor]

# Samplers that work in t = -log(sigma) (dpm_fast, dpm_adaptive) call the model at
# exp(-(-log sigma_max)), a few ulps away from sigma_max. Calls within this relative
# distance above sigma_from count as the first call, not as a call above the schedule.
_START_SLACK = 1e-4


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
    comfyui: bool = False,
) -> Span:
    """The span of a schedule, or of an adaptive sampler's ``(sigma_min, sigma_max)`` range.

    ``sigma_to`` is the larger of the schedule's last level and the model's own
    ``sigma_min`` when the model has one, else the schedule's last non-zero level.
    ``comfyui=True`` reads a range as ComfyUI does: it converts the full schedule,
    ending in 0, for dpm_fast/dpm_adaptive, so the ramp ends at the model's sigma_min.
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
        sigma_to = floor if comfyui and sigmas is None else max(last, floor)
    else:
        sigma_to = last_nonzero
    return Span(sigma_from=sigma_from, sigma_to=sigma_to, sigmas=sigmas, sigma_last=last_nonzero)


def nearest_timestep(model: Any) -> Optional[Callable[[Tensor], Tensor]]:
    """ComfyUI's ``model_sampling.timestep`` for a discrete-schedule model: the index of
    the training level nearest in log sigma, whatever the model's own ``quantize``.
    ``None`` when no ``log_sigmas`` is found down ``model``'s :func:`inner_models` chain."""
    log_sigmas = find_attribute(model, "log_sigmas")
    if log_sigmas is None:
        return None

    def timestep(sigma: Tensor) -> Tensor:
        dists = sigma.log().to(log_sigmas.device) - log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    return timestep


def make_clock(
    name: str,
    span: Span,
    sigma_to_t: Optional[Callable[[Tensor], Tensor]] = None,
    dtype: torch.dtype = torch.float32,
    device: Any = None,
) -> Tau:
    """tau(sigma) for clock ``name`` over ``span``; see the module docstring.

    tau is evaluated in ``dtype``, which should be the dtype the model calls' sigmas
    are compared in.
    """
    if name not in CLOCKS:
        raise ValueError(f"threshold must be one of {', '.join(map(repr, CLOCKS))}, got {name!r}")
    if name == "step":
        if span.sigmas is None:
            raise ValueError(
                "threshold='step' needs the schedule as sigmas=; the adaptive samplers have no "
                "steps, use threshold='timestep' or 'sigma' with sigma_min=/sigma_max="
            )
        return _step_clock(span.sigmas.detach().to(device=device, dtype=dtype))
    if not span.sigma_to < span.sigma_from:
        raise ValueError(
            f"the schedule spans no noise range (first level {span.sigma_from:g}, last counted level "
            f"{span.sigma_to:g}); give at least two non-zero sigmas, or use threshold='step'"
        )
    sigma_from = torch.tensor(span.sigma_from, dtype=dtype, device=device)
    sigma_to = torch.tensor(span.sigma_to, dtype=dtype, device=device)
    if name == "timestep" and sigma_to_t is not None:
        def t(sigma: Tensor) -> Tensor:
            return sigma_to_t(sigma).to(dtype)

        t_from, t_to = t(sigma_from), t(sigma_to)

        def tau(sigma: Tensor) -> Tensor:
            return (t(sigma.to(dtype)) - t_to) / (t_from - t_to)

        return tau

    if span.sigma_from == float("inf"):
        raise ValueError(
            "the schedule starts at sigma = inf (a flow model's t = 1), where log sigma has no finite "
            "range: use threshold='timestep' or 'step'"
        )
    log_range = torch.log(sigma_from / sigma_to)

    def tau(sigma: Tensor) -> Tensor:
        return torch.log(sigma.to(dtype) / sigma_to) / log_range

    return tau


def _step_clock(sigmas: Tensor) -> Tau:
    n = len(sigmas) - 1
    levels = 1 - torch.arange(n + 1, dtype=sigmas.dtype, device=sigmas.device) / n
    nonzero = sigmas > 0
    knots, values = sigmas[nonzero].flip(0), levels[nonzero].flip(0)  # ascending
    if len(knots) == 1:
        # A single step from sigma to 0: add a level one e-fold below, at the next step's tau.
        knots = torch.cat([knots / torch.e, knots])
        values = torch.cat([values - 1 / n, values])

    def tau(sigma: Tensor) -> Tensor:
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

    return tau


# DPM2-ancestral and DPM++ 2S-ancestral make their second call at sqrt(sigma_i *
# sigma_down), which is sigma_{i+1} in exact arithmetic and an ulp or two either side of
# it in floats. A call within this relative distance above a schedule level counts as at
# that level: one ulp above, "the next level below" would be that level itself and the
# smooth ramp would collapse into a hard edge (measured: a band of 21.7 at 20 steps).
_LEVEL_SLACK = 1e-5

# The smooth release's ramp width in tau for the range samplers (dpm_fast, dpm_adaptive),
# which have no schedule levels: a pixel eases in over the last tenth of the ramp before
# its binary release, as over one step of a 10-step schedule.
RANGE_RAMP = 0.1


def make_floor(tau: Tau, span: Span, dtype: torch.dtype = torch.float32, device: Any = None) -> Tau:
    """tau_lo(sigma): tau at the next schedule level strictly below ``sigma``, for the
    smooth release; 0 where that level is 0 or lies past the ramp's end. A call within
    a relative 1e-5 above a level counts as at it (see ``_LEVEL_SLACK``).

    Without a schedule (the range samplers) it is ``tau(sigma) - RANGE_RAMP``, at least 0.
    Looked up on the device (one searchsorted and one gather): no host sync at call time.
    """
    if span.sigmas is None:
        def floor(sigma: Tensor) -> Tensor:
            return (tau(sigma) - RANGE_RAMP).clamp(min=0)

        return floor
    knots = span.sigmas.detach().to(device=device, dtype=dtype).flip(0)  # ascending
    taus = torch.zeros_like(knots)
    positive = knots > 0
    taus[positive] = tau(knots[positive]).clamp(min=0)
    # floors[i] is tau at the i-th knot from the bottom; floors[0] = 0 for "no level below".
    floors = torch.cat([taus.new_zeros(1), taus])
    below = knots * (1 + _LEVEL_SLACK)

    def floor(sigma: Tensor) -> Tensor:
        # searchsorted counts the knots strictly below sigma (by more than the slack):
        # index i is the i-th from the bottom.
        return floors[torch.searchsorted(below, sigma.to(dtype).contiguous())]

    return floor


def release_sigmas(tau: Tau, strengths: Tensor, chunk: Optional[int] = None) -> Tensor:
    """For each strength s (1-D), the largest sigma with ``tau(sigma) <= s``.

    A bisection on the bit patterns of ``strengths.dtype``: positive floats sort as
    their bits do, so ~31 rounds (float32) find the exact boundary for any tau that
    never falls as sigma grows, whatever the model's ``sigma_to_t`` does (interpolated,
    quantised, ...). tau is taken to hold at sigma = 0, where no sampler calls the model.
    Returns the largest finite float where every finite sigma qualifies.
    """
    if chunk is None:
        # A discrete model's sigma_to_t builds a (1000, n) table per call: on a CPU small
        # chunks stay in cache (128 measured 3x faster than 4096); on a GPU, launches dominate.
        chunk = 128 if strengths.device.type == "cpu" else 1 << 16
    dtype = strengths.dtype
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    infinity = torch.tensor(float("inf"), dtype=dtype).view(bits).item()
    out = []
    for s in strengths.split(chunk):
        low = torch.zeros(s.shape, dtype=bits, device=s.device)
        high = torch.full(s.shape, infinity, dtype=bits, device=s.device)
        for _ in range(infinity.bit_length()):
            mid = low + (high - low) // 2
            ok = tau(mid.view(dtype)) <= s
            low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
        out.append(low.view(dtype))
    return torch.cat(out) if out else strengths.clone()


def release_map(tau: Tau, span: Span, strength: Tensor, *, comfyui: bool = False) -> Tensor:
    """Per pixel, the largest call sigma at which it is free; same shape as ``strength``.

    Default: strength 0 is never released, and a call above ``sigma_from`` frees
    nothing. ``comfyui=True`` keeps ComfyUI's rule ``s >= tau`` everywhere, so strength
    0 is freed wherever tau(sigma) <= 0, i.e. at a last call at ``sigma_to``.
    """
    values, index = torch.unique(strength, return_inverse=True)
    release = release_sigmas(tau, values)
    # A call evaluates tau on one sigma, and a vectorised evaluation may round a log
    # differently. At the two ends of the ramp, go by the one-sigma value.
    for level in (span.sigma_from, span.sigma_to):
        end = torch.tensor([level], dtype=release.dtype, device=release.device)
        release = torch.where(values >= tau(end), torch.maximum(release, end), release)
    if not comfyui:
        top = span.sigma_from * (1 + _START_SLACK)
        release = torch.where(values >= 1, top, release.clamp(max=span.sigma_from))
        release = torch.where(values <= 0, float("-inf"), release)
    return release[index]
