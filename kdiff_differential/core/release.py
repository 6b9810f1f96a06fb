"""Release: when each pixel is freed, and how much of it a call lets through.

A pixel of strength s is free at a call when ``s >= tau(sigma)`` (tau: the clock, see
:mod:`.clocks`). Because tau never falls as sigma grows, that is the same as
``sigma <= release_sigma(s)``: :func:`release_map` finds that sigma once per pixel,
when the wrapper is built, so that a model call costs a single comparison.

A release rule turns "free or not" into the blend weight m of a call, by name
(:data:`RELEASES`): :class:`BinaryRelease` (ComfyUI's: m = 1 where free, else 0;
the diffusers pipelines' rule, :func:`step_release_map`, is binary too, on another
clock), :class:`SmoothRelease` (each pixel eased in over the step before its
binary release, linearly in tau) and :class:`FaithfulRelease` (the same step, linearly
in sigma**3, told the sampler). Below ``strength`` 1 all blend the map in,
``m' = strength * m + (1 - strength) * s``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, cast

import torch
from torch import Tensor, nn

from ..choices import RELEASES
from .clocks import Clock, Span
from .samplers import Sampler


# Samplers that work in t = -log(sigma) (dpm_fast, dpm_adaptive) call the model at
# exp(-(-log sigma_max)), a few ulps away from sigma_max. Calls within this relative
# distance above sigma_from count as the first call, not as a call above the schedule.
_START_SLACK = 1e-4

# DPM2-ancestral and DPM++ 2S-ancestral make their second call at sqrt(sigma_i *
# sigma_down), which is sigma_{i+1} in exact arithmetic and an ulp or two either side of
# it in floats. A call within this relative distance above a schedule level counts as at
# that level: one ulp above, "the next level below" would be that level itself and the
# smooth ramp would collapse into a hard edge.
LEVEL_SLACK = 1e-5

# The smooth release's ramp width in tau for the range samplers (dpm_fast, dpm_adaptive),
# which have no schedule levels: a pixel eases in over the last tenth of the ramp before
# its binary release, as over one step of a 10-step schedule.
RANGE_RAMP = 0.1


def level_tables(span: Span, value: Callable[[Tensor], Tensor], dtype: torch.dtype = torch.float32,
                 device: Any = None) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(below, floors), the tables :class:`LevelBelow` looks ``value`` up in: the
    schedule's levels ascending, each widened by ``LEVEL_SLACK``, and ``value`` at each
    (0 at level 0), after a 0 for "no level below"; ``floors[searchsorted(below, sigma)]``
    is ``value`` at the next level strictly below sigma. (None, None) without a schedule."""
    if span.sigmas is None:
        return None, None
    knots = span.sigmas.detach().to(device=device, dtype=dtype).flip(0)  # ascending
    values = torch.zeros_like(knots)
    positive = knots > 0
    values[positive] = value(knots[positive])
    return knots * (1 + LEVEL_SLACK), torch.cat([values.new_zeros(1), values])


class LevelBelow(nn.Module):
    """``value`` at the next schedule level strictly below a call's sigma, 0 where that
    level is 0 or there is none: a table looked up on the device (one searchsorted and
    one gather; :func:`level_tables`), no host sync at call time. A call within a
    relative 1e-5 above a level counts as at it (see ``LEVEL_SLACK``). Without a
    schedule (the range samplers) the tables are ``None``.
    """

    below: Optional[Tensor]
    floors: Optional[Tensor]

    def __init__(self, span: Span, value: Callable[[Tensor], Tensor], dtype: torch.dtype = torch.float32,
                 device: Any = None) -> None:
        super().__init__()
        below, floors = level_tables(span, value, dtype, device)
        self.register_buffer("below", below)
        self.register_buffer("floors", floors)

    def forward(self, sigma: Tensor) -> Tensor:
        # searchsorted counts the knots strictly below sigma (by more than the slack):
        # index i is the i-th from the bottom.
        below, floors = self.below, self.floors  # a buffer read costs a module lookup: once
        assert below is not None and floors is not None, "a level below needs a schedule"
        # index_select, not indexing: it dispatches fewer kernels on the CPU.
        return floors.index_select(0, torch.searchsorted(below, sigma.to(below.dtype).contiguous()))


class Floor(LevelBelow):
    """tau_lo(sigma): tau at the next schedule level strictly below ``sigma``, for the
    smooth release; 0 where that level is 0 or lies past the ramp's end (a
    :class:`LevelBelow` of the clock). Without a schedule (the range samplers) it is
    ``tau(sigma) - RANGE_RAMP``, at least 0.
    """

    def __init__(self, clock: Clock, span: Span, dtype: torch.dtype = torch.float32, device: Any = None) -> None:
        super().__init__(span, lambda knots: clock(knots).clamp(min=0), dtype, device)

    def forward(self, sigma: Tensor, tau: Tensor) -> Tensor:  # type: ignore[override]
        """tau_lo at ``sigma``, given ``tau`` = the clock at ``sigma``."""
        if self.floors is None:
            return (tau - RANGE_RAMP).clamp(min=0)
        return super().forward(sigma)


# Where release_sigmas brackets each strength: 4096 noise levels, log-spaced over the
# given range (a ramp's, a little widened), else over 1e-30..1e30 (every sigma a model uses).
_BRACKETS = 4097
_WIDEST = (1e-30, 1e30)
# tau evaluated in floats is monotone only to within a few ulps (a model's sigma_to_t
# interpolates: its rounding wiggles), so the bracket settles a comparison only this
# many ulps away from its ends; closer in, tau decides, as in a plain bisection.
_MARGIN = 1 << 8


def release_sigmas(tau: Callable[[Tensor], Tensor], strengths: Tensor, around: tuple[float, float] = _WIDEST) -> Tensor:
    """For each strength s (1-D), the largest sigma with ``tau(sigma) <= s``.

    A bisection on the bit patterns of ``strengths.dtype`` (positive floats sort as
    their bits do): ~31 rounds (float32) find the exact boundary for any tau that never
    falls as sigma grows, whatever the model's ``sigma_to_t`` does (interpolated,
    quantised, ...). tau is taken to hold at sigma = 0, where no sampler calls the model.
    Returns the largest finite float where every finite sigma qualifies.

    Its cost hardly depends on how many distinct strengths there are: tau is tabulated
    once on a log-spaced grid of noise levels and one ``searchsorted`` brackets every
    strength between two neighbours of it (``around``: the noise range where most
    boundaries lie, for a finer grid; any range gives the same result); a round of the bisection then evaluates tau
    only where its midpoint lies inside (or within ``_MARGIN`` ulps of) the bracket, and
    takes the bracket's word elsewhere. The rounds and their midpoints are those of a
    bisection over all floats, so the result is the same float, wiggles of tau included.
    """
    dtype = strengths.dtype
    bits = {torch.float32: torch.int32, torch.float64: torch.int64}[dtype]
    low_end, high_end = (max(end, _WIDEST[0]) for end in (around[0] / 2, min(2 * around[1], _WIDEST[1])))
    grid = torch.logspace(math.log10(low_end), math.log10(high_end), _BRACKETS, dtype=dtype, device=strengths.device)
    zero = torch.zeros(1, dtype=dtype, device=grid.device)
    edges = torch.cat([zero, grid, zero + float("inf")]).view(bits)
    infinity = int(edges[-1])
    # tau(grid[k - 1]) <= s < tau(grid[k]): the boundary lies in [grid[k - 1], grid[k]).
    k = torch.searchsorted(tau(grid).contiguous(), strengths.contiguous(), right=True)
    surely_free, surely_not = edges[k] - _MARGIN, edges[k + 1] + _MARGIN
    surely_free[k == 0] = -1  # below the grid, and above it, tau alone decides
    surely_not[k == len(grid)] = infinity + 1
    low = torch.zeros(strengths.shape, dtype=bits, device=strengths.device)
    high = torch.full(strengths.shape, infinity, dtype=bits, device=strengths.device)
    for _ in range(infinity.bit_length()):
        mid = low + (high - low) // 2
        ok = mid <= surely_free
        unsure = (mid > surely_free) & (mid < surely_not)
        count = int(unsure.sum())
        if 2 * count > len(mid):  # most need tau: all in one pass beats gathering them
            ok = torch.where(unsure, tau(mid.view(dtype)) <= strengths, ok)
        elif count:
            some = unsure.nonzero().squeeze(1)
            ok[some] = tau(mid[some].view(dtype)) <= strengths[some]
        low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
    return low.view(dtype)


def release_map(tau: Callable[[Tensor], Tensor], span: Span, strength: Tensor, *, frees_strength_zero: bool = False) -> Tensor:
    """Per pixel, the largest call sigma at which it is free; same shape as ``strength``.

    Default: strength 0 is never released, and a call above ``sigma_from`` frees
    nothing. ``frees_strength_zero`` keeps ComfyUI's rule ``s >= tau`` everywhere, so
    strength 0 is freed wherever tau(sigma) <= 0, i.e. at a last call at ``sigma_to``.
    """
    values, index = torch.unique(strength, return_inverse=True)
    release = release_sigmas(tau, values, (span.sigma_to, span.sigma_from))
    # A call evaluates tau on one sigma, and a vectorised evaluation may round a log
    # differently. At the two ends of the ramp, go by the one-sigma value.
    for level in (span.sigma_from, span.sigma_to):
        end = torch.tensor([level], dtype=release.dtype, device=release.device)
        release = torch.where(values >= tau(end), torch.maximum(release, end), release)
    if not frees_strength_zero:
        top = span.sigma_from * (1 + _START_SLACK)
        release = torch.where(values >= 1, top, release.clamp(max=span.sigma_from))
        release = torch.where(values <= 0, float("-inf"), release)
    return release[index]


def step_release_map(keep: Tensor, sigmas: Tensor, rule: str, steps: Optional[int] = None) -> Tensor:
    """Per pixel, the largest call sigma at which the diffusers community Differential
    Diffusion pipelines use its prediction, for the keep-map ``keep`` (1 = keep) on the
    schedule ``sigmas`` (N calls, at its first N levels); returned in ``sigmas``' dtype.

    The pipelines threshold ``keep`` against ``arange(N) / N`` (in float32, as they do) by
    step index. ``rule="pre"`` (SDXL, SD3): before call i >= 1 the pixels with
    ``keep > i/N`` are set to the original noised to step i, so a pixel's prediction
    first counts at the first call i with ``keep <= (i+1)/N``. ``"post"`` (Flux.1,
    Z-Image): after step i < N - 1 the pixels with ``keep > i/N`` are set to the
    original noised to step i + 1, so the first call with ``keep <= i/N`` counts. Under
    both, every pixel is free at the pipeline's last call, N - 1. ``steps`` is N where
    the schedule leaves that call out (Z-Image's, at t = 0): the pixels held through
    the calls it has are then never freed. Frozen pixels then follow the original
    exactly, which is what those resets do, and a call between two levels (another
    sampler) is masked as the level above it: the same rule on the same grid.
    """
    steps = len(sigmas) - 1 if steps is None else steps
    thresholds = (torch.arange(steps, dtype=torch.float32) / steps).to(device=keep.device, dtype=keep.dtype)
    if rule == "pre":
        counted = thresholds[1:]
    elif rule == "post":
        counted = thresholds[:-1]
    else:
        raise ValueError(f"rule must be 'pre' or 'post', got {rule!r}")
    # The resets cover a prefix of the calls: count the ones a pixel is held through.
    index = (keep.unsqueeze(-1) > counted).sum(-1)
    levels = torch.cat([sigmas.detach().to(keep.device), sigmas.new_zeros(1).to(keep.device)])
    # Widened as LevelBelow widens levels: a call a few ulps above a level counts as at it.
    return levels[index] * (1 + LEVEL_SLACK)


# Two schedule levels closer than this in tau (a quantised clock can map neighbours to
# one timestep) make the smooth weight a step: no division by zero.
_MIN_STEP = 1e-6


class Release(nn.Module):
    """A release rule: the blend mask of a call, (k, B|1, 1, H, W), 1 = the pixel follows
    the sampler, 0 = held to the original.

    ``strength`` below 1 blends the map in: ``strength * m + (1 - strength) * s``; the
    map's part is a buffer (``soft``), built once.
    """

    name = ""
    soft: Optional[Tensor]

    def __init__(self, strengths: Tensor, strength: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.strength = strength
        self.register_buffer("soft", ((1 - strength) * strengths).to(dtype) if strength < 1 else None)

    def call_sigma(self, sigma: Tensor) -> Tensor:
        """The sigma whose mask a sampler's call at ``sigma`` (k*B,) gets: ``sigma``
        itself, but for a rule that tells a sampler's calls apart (it may keep state)."""
        return sigma

    def forward(self, change_map: Tensor, release_sigma: Tensor, sigma: Tensor, level: Tensor) -> Tensor:
        """The mask for a call at ``sigma`` (k*B,), given the map (B|1, 1, H, W), the
        pixels' release sigmas (B|1, 1, H, W; the binary rule frees a pixel where
        ``level <= release_sigma``) and ``level``, sigma as (k, B, 1, 1, 1), both in the
        release sigmas' dtype."""
        raise NotImplementedError  # pragma: no cover - each rule has its own


class BinaryRelease(Release):
    """m = 1 where the pixel is free, else 0: every pixel whose strength lies between
    tau of two neighbouring schedule levels is freed at the same call (bands)."""

    name = "binary"
    free_level: Optional[Tensor]

    def __init__(self, strengths: Tensor, strength: float, dtype: torch.dtype) -> None:
        super().__init__(strengths, strength, dtype)
        # The mask of a free pixel below strength 1, so that a call is one where().
        self.register_buffer("free_level", None if self.soft is None else (strength + self.soft).to(dtype))

    def forward(self, change_map: Tensor, release_sigma: Tensor, sigma: Tensor, level: Tensor) -> Tensor:
        free = level <= release_sigma
        soft, free_level = self.soft, self.free_level
        if soft is None or free_level is None:
            return free.to(change_map.dtype)
        return torch.where(free, free_level, soft)


class SmoothRelease(Release):
    """Each pixel eased in over the one step before its binary release:
    ``m = clamp((s - tau_lo) / (tau_hi - tau_lo), 0, 1)``, tau_hi = tau(sigma), tau_lo
    = the :class:`Floor` below sigma; 1 wherever the binary rule frees the pixel."""

    name = "smooth"

    def __init__(self, strengths: Tensor, strength: float, dtype: torch.dtype, clock: Clock, floor: "Floor") -> None:
        super().__init__(strengths, strength, dtype)
        self.clock, self.floor = clock, floor

    def forward(self, change_map: Tensor, release_sigma: Tensor, sigma: Tensor, level: Tensor) -> Tensor:
        free = level <= release_sigma
        tau = self.clock.forward(sigma)
        tau_lo = self.floor.forward(sigma, tau)
        scale = (tau - tau_lo).clamp_(min=_MIN_STEP).reciprocal_()
        per_image = level.shape
        weight = change_map - tau_lo.reshape(per_image).to(change_map.dtype)
        weight = weight.mul_(scale.reshape(per_image).to(change_map.dtype)).clamp_(0, 1).masked_fill_(free, 1)
        soft = self.soft
        return weight if soft is None else soft + self.strength * weight


# The faithful release's ramp is linear in sigma ** FAITHFUL_POWER: how much a pixel changes
# grows about so with the noise level it is freed at (samplers/PERFORMANCE.md, "Faithful
# release", has the benchmark's DAM per power).
FAITHFUL_POWER = 3.0
# The samplers whose edges band at 5 steps under power 3 and not under power 1, at the
# same or a lower DAM, on the benchmark's scene and its variants (PERFORMANCE.md).
FAITHFUL_POWERS = {"dpm_2": 1.0, "dpm_2_ancestral": 1.0, "dpmpp_3m_sde": 1.0}
# Where a sampler's second call of a step, at the next level, is masked (``at_next_level``):
# this far up the step, in log sigma. 0.5 is the geometric midpoint, where DPM2 makes its
# own second call. DPM2-ancestral's update from there runs from sigma_i down to
# sigma_i+1**2 / sigma_i, and it bands less masked three quarters up (PERFORMANCE.md).
FAITHFUL_MIDPOINT = 0.5
FAITHFUL_MIDPOINTS = {"dpm_2_ancestral": 0.75}
# Below this many steps one step spans most of the noise range, and a ramp in sigma**3
# over it gives nearly all of the step's change to its top strengths, losing the map.
# There the faithful release is the smooth rule, but for the samplers whose second call
# comes at the next level, which the smooth rule bands (PERFORMANCE.md, "Few steps").
FAITHFUL_MIN_STEPS = 4


class FaithfulRelease(Release):
    """Each pixel eased in over the step before its binary release, linearly in sigma**p
    where :class:`SmoothRelease` is linear in tau:
    ``m = clamp((r**p - lo**p) / (sigma**p - lo**p), 0, 1)``, r the pixel's release
    sigma, lo the next schedule level below the call, p = ``power``
    (:data:`FAITHFUL_POWER`, or the sampler's in :data:`FAITHFUL_POWERS`); 1 wherever
    the binary rule frees the pixel (there r >= sigma), 0 at strength 0 (r**p = 0).

    Why: how much a pixel changes grows much faster than linearly with the noise level
    it is freed at, so a weight linear in tau gives a pixel half-way through its step
    far more than half the change (smooth over-changes, measured in
    samplers/PERFORMANCE.md); sigma**3 is close to how the change grows.

    ``at_next_level``: the sampler's second call of a step comes at the next level
    (Heun; DPM2-ancestral and DPM++ 2S-ancestral, whose midpoint is the next level).
    There the pixels the binary rule frees would take the step's whole correction at
    once (Heun over-changes most of all), so that call is masked as at a point
    ``midpoint`` of the way up the step in log sigma (:data:`FAITHFUL_MIDPOINT`, the
    geometric midpoint, where DPM2 makes its own second call; or the sampler's in
    :data:`FAITHFUL_MIDPOINTS`). That call is told apart by state: the sigma of the
    previous call, a buffer (no host sync; ``mask()`` keeps no state).
    """

    name = "faithful"
    release_power: Tensor
    below: Tensor
    floors: Tensor
    previous: Optional[Tensor]

    def __init__(self, strengths: Tensor, strength: float, dtype: torch.dtype, release_sigma: Tensor, span: Span,
                 at_next_level: bool = False, power: float = FAITHFUL_POWER, midpoint: float = FAITHFUL_MIDPOINT) -> None:
        super().__init__(strengths, strength, dtype)
        table_dtype = release_sigma.dtype
        self.power, self.midpoint = float(power), float(midpoint)
        # Where r**p can overflow (a flow schedule's infinite sigma), powers are clamped
        # to the largest float, so that inf / inf gives no NaN; elsewhere a call skips it.
        self.largest = torch.finfo(table_dtype).max
        top = max(span.sigma_from * (1 + _START_SLACK), 1.0)
        self.overflows = self.power * math.log(top) > math.log(self.largest) - 1
        # r**p per pixel, built once. The call's sigma**p goes through this same
        # function (the same kernel, as multiplications for p = 3): where r = sigma the
        # two are the same float and the weight is exactly 1.
        self.register_buffer("release_power", self.powered(release_sigma.clamp(min=0)))
        below, floors = level_tables(span, self.powered, table_dtype, release_sigma.device)
        self.register_buffer("below", below)
        self.register_buffer("floors", floors)
        self.register_buffer("previous", torch.zeros(1, dtype=table_dtype, device=release_sigma.device) if at_next_level else None)

    def powered(self, sigma: Tensor) -> Tensor:
        """sigma**p, at most the dtype's largest float."""
        return sigma.pow(self.power).clamp_(max=self.largest)

    def call_sigma(self, sigma: Tensor) -> Tensor:
        previous = self._buffers["previous"]  # see forward
        if previous is None:
            return sigma
        # A call below the previous one is Heun's second call (the next step's first
        # comes at the same sigma): sigma * (previous / sigma)**midpoint there, and
        # elsewhere sigma * 1**midpoint, which is sigma exactly.
        sigma = sigma.to(previous.dtype)
        masked_at = torch.maximum(previous, sigma).div_(sigma).pow_(self.midpoint).mul_(sigma)
        torch.amax(sigma, 0, keepdim=True, out=previous)
        return masked_at

    def forward(self, change_map: Tensor, release_sigma: Tensor, sigma: Tensor, level: Tensor) -> Tensor:
        # Buffers read from the dict: nn.Module's attribute lookup costs about as much on
        # the CPU as a kernel on these tiny tables.
        tables = cast(dict[str, Tensor], self._buffers)
        # The step's bottom and top as powers, per image: lo**p (the level below the
        # call, looked up as LevelBelow does) and sigma**p.
        low = torch.take(tables["floors"], torch.searchsorted(tables["below"], level))
        top = self.powered(level) if self.overflows else level.pow(self.power)  # the same floats either way
        span = top.sub_(low)
        # A division, not a product with a reciprocal: x / x is exactly 1.
        weight = torch.sub(tables["release_power"], low).div_(span).clamp_(0, 1)
        if weight.dtype != change_map.dtype:
            weight = weight.to(change_map.dtype)
        soft = self._buffers["soft"]
        return weight if soft is None else soft + self.strength * weight


def faithful_applies(span: Span, sampler: Optional[Sampler]) -> bool:
    """Whether ``"faithful"`` runs its own rule over ``span`` for ``sampler`` (else the
    smooth one): on a schedule of at least :data:`FAITHFUL_MIN_STEPS` steps, or of two
    or more for a sampler whose second call comes at the next level (whose calls the
    smooth rule frees in bands there; a single step, to 0, makes no second call)."""
    if span.sigmas is None:
        return False
    steps = int((span.sigmas > 0).sum())
    return steps >= FAITHFUL_MIN_STEPS or (steps >= 2 and sampler is not None and sampler.second_call_at_next_level)


def make_release(name: str, strengths: Tensor, strength: float, dtype: torch.dtype, clock: Clock, span: Span,
                 release_sigma: Optional[Tensor] = None, sampler: Optional[Sampler] = None) -> Release:
    """The release rule ``name`` (:data:`RELEASES`) for the map ``strengths``
    (B|1, 1, H, W, in the clock's dtype) at ``strength``, timed by ``clock`` over
    ``span``; its masks in ``dtype`` (the latent's). ``"faithful"`` needs the pixels'
    ``release_sigma`` and adapts to ``sampler`` when given; on a range sampler (no
    schedule levels) and on a schedule of fewer than :data:`FAITHFUL_MIN_STEPS` steps
    it is the smooth rule (see :func:`faithful_applies`)."""
    if name == "binary":
        return BinaryRelease(strengths, strength, dtype)
    if name == "faithful" and faithful_applies(span, sampler):
        if release_sigma is None:
            raise ValueError("the faithful release needs the pixels' release_sigma")
        if sampler is None:
            return FaithfulRelease(strengths, strength, dtype, release_sigma, span)
        return FaithfulRelease(strengths, strength, dtype, release_sigma, span, sampler.second_call_at_next_level,
                               FAITHFUL_POWERS.get(sampler.name, FAITHFUL_POWER),
                               FAITHFUL_MIDPOINTS.get(sampler.name, FAITHFUL_MIDPOINT))
    if name in ("smooth", "faithful"):
        floor = Floor(clock, span, clock_dtype(clock), strengths.device)
        return SmoothRelease(strengths, strength, dtype, clock, floor)
    raise ValueError(f"release must be one of {', '.join(map(repr, RELEASES))}, got {name!r}")


def clock_dtype(clock: Clock) -> torch.dtype:
    """The dtype ``clock`` computes tau in (its buffers')."""
    return next(clock.buffers()).dtype
