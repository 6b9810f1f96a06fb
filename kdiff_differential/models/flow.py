"""Flow-matching models (SD3/SD3.5, Flux.1) as k-diffusion denoisers, by reparametrisation.

A flow model sees ``x_t = (1 - t) x0 + t eps`` and predicts the velocity ``v``, with
``x0 = x_t - t v``. Dividing by ``1 - t``::

    sigma = t / (1 - t),    x = x_t / (1 - t)    =>    x = x0 + sigma * eps,

the variance-exploding form every k-diffusion sampler assumes. :class:`FlowDenoiser`
maps a sampler's ``(x, sigma)`` back to ``(x_t, t)``, calls the velocity model and
returns ``x0``, so every upstream sampler runs unchanged. Euler steps coincide exactly
under this change of variables; frozen pixels ``latent + noise * sigma`` are exactly
ComfyUI's flow re-noising ``(1 - t) x0 + t eps`` after the division.

The start, t = 1. A full-denoise flow schedule starts at t = 1, sigma = inf, where x_t
is pure noise and says nothing of x0. No sampler can step from an infinite sigma, so
:meth:`DifferentialDenoiser.start_from_noise` takes that first step itself: one model call on pure noise
at t = 1 (the wrapper reads x as ``x / sigma``, the noise, when sigma is inf), then the
prediction re-noised to the next sigma with the wrapper's own noise. That is the limit
of an Euler (= DDIM) step from sigma -> inf, so an Euler run from t = 1 is exactly
diffusers' ``FlowMatchEulerDiscreteScheduler``; other samplers take their own steps
from the second level on. :class:`DifferentialDenoiser` keeps the whole schedule,
inf included, so that its ramp runs from t = 1 (ComfyUI's); only the ``timestep`` and
``step`` clocks accept an infinite start (log sigma has no finite range there).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn

VelocityModel = Callable[..., Tensor]


def flux_mu(image_seq_len: int, config: dict[str, Any]) -> float:
    """Flux's resolution-dependent shift: mu linear in the image's token count, from
    ``base_shift`` at ``base_image_seq_len`` to ``max_shift`` at ``max_image_seq_len``."""
    base, top = config.get("base_image_seq_len", 256), config.get("max_image_seq_len", 4096)
    low, high = config.get("base_shift", 0.5), config.get("max_shift", 1.15)
    return low + (high - low) * (image_seq_len - base) / (top - base)


def flux2_mu(image_seq_len: int, steps: int) -> float:
    """FLUX.2's shift, fitted by Black Forest Labs: mu linear in the token count at 10
    and at 200 steps, and linear in the steps between those two lines; beyond 4300
    tokens the 200-step line alone."""
    at_200 = 0.00016927 * image_seq_len + 0.45666666
    if image_seq_len > 4300:
        return at_200
    at_10 = 8.73809524e-05 * image_seq_len + 1.89833333
    return at_200 + (at_200 - at_10) / 190 * (steps - 200)


class FlowDenoiser(nn.Module):
    """A velocity model ``(x_t, t, **kwargs) -> v`` as a k-diffusion denoiser ``(x, sigma) -> x0``.

    ``x`` is (N, C, H, W), ``sigma`` (N,); the model gets ``x_t = x / (1 + sigma)`` and
    ``t = sigma / (1 + sigma)`` in [0, 1], and returns v of x_t's shape. At sigma = inf
    (t = 1) ``x`` is read as the noise itself (the limit of ``x / sigma``).

    The schedule is the model's own, shifted: a fixed ``shift`` (SD3, the scheduler
    config's ``shift``), or ``mu`` (Flux, :func:`flux_mu` of the image's token count),
    ``t -> e^mu / (e^mu + 1/t - 1)``; ``mu_of_steps(n)``, where given, is the mu of an
    ``n``-step schedule (FLUX.2's, :func:`flux2_mu`), ``mu`` then the range's.
    ``one_over_n``: the unshifted times are ``linspace(1, 1/n, n)``, as the pipelines
    that pass their own sigmas (Flux.1, Z-Image, FLUX.2) have them, rather than the
    scheduler's spacing down to its smallest training level (SD3); by default, where
    ``mu`` is given. ``flow_sigmas``: they are ``linspace(1, 1/N, n + 1)[:-1]`` (N the
    training steps), as diffusers' ``UniPCMultistepScheduler`` with ``use_flow_sigmas``
    spaces them (Wan's pipelines). ``sigma_min`` is the schedule's smallest training
    level, ``sigma_max`` is inf (t = 1). Either shift multiplies sigma by a constant
    (``shift`` or ``e^mu``); ``sigma_to_t`` is the flow time t, so the
    ``timestep`` clock's tau is linear in the shifted flow time, as in ComfyUI.
    ``shift_terminal`` (Qwen-Image's 0.02) stretches a schedule's shifted flow times
    so that its last one before 0 is that value, as diffusers' scheduler does.
    """

    # The community pipeline whose rule compat="diffusers" follows (set by the flow families).
    diffusers_pipeline: Optional[str] = None

    def __init__(
        self,
        model: VelocityModel,
        *,
        shift: float = 1.0,
        mu: Optional[float] = None,
        num_train_timesteps: int = 1000,
        mu_of_steps: Optional[Callable[[int], float]] = None,
        one_over_n: Optional[bool] = None,
        shift_terminal: Optional[float] = None,
        flow_sigmas: bool = False,
    ) -> None:
        super().__init__()
        if not callable(model):
            raise TypeError(f"model must be a callable velocity model (x_t, t, **kwargs) -> v, got {type(model).__name__}")
        if not (isinstance(shift, (int, float)) and shift > 0 and math.isfinite(shift)):
            raise ValueError(f"shift must be a positive number, got {shift!r}")
        if mu is not None and not (isinstance(mu, (int, float)) and math.isfinite(mu)):
            raise ValueError(f"mu must be a finite number or None, got {mu!r}")
        if mu_of_steps is not None and not callable(mu_of_steps):
            raise TypeError(f"mu_of_steps must be a callable (steps) -> mu or None, got {type(mu_of_steps).__name__}")
        self.inner_model = model
        if shift_terminal is not None and not (isinstance(shift_terminal, (int, float)) and 0 < shift_terminal < 1):
            raise ValueError(f"shift_terminal must be a number in (0, 1) or None, got {shift_terminal!r}")
        self.shift, self.mu, self.mu_of_steps, self.shift_terminal = float(shift), mu, mu_of_steps, shift_terminal
        self.one_over_n = mu is not None if one_over_n is None else bool(one_over_n)
        self.flow_sigmas, self.num_train_timesteps = bool(flow_sigmas), num_train_timesteps
        # Both shifts are one constant factor on sigma: t -> k t / (1 + (k - 1) t) is sigma -> k sigma.
        self.factor = math.exp(mu) if mu is not None else float(shift)
        self.sigma_min = self.factor * (1 / num_train_timesteps) / (1 - 1 / num_train_timesteps)
        self.sigma_max = math.inf

    @classmethod
    def from_scheduler_config(
        cls, model: VelocityModel, config: dict[str, Any], image_seq_len: Optional[int] = None, *,
        one_over_n: Optional[bool] = None, mu_of_steps: Optional[Callable[[int], float]] = None, steps: Optional[int] = None,
    ) -> "FlowDenoiser":
        """The wrapper for a diffusers ``FlowMatchEulerDiscreteScheduler`` config; with
        ``use_dynamic_shifting`` (Flux), ``image_seq_len`` (packed tokens) sets mu, or
        ``mu_of_steps`` does (FLUX.2's, which depends on the steps too; the range's mu
        is that of ``steps``). ``one_over_n`` as in the constructor; the config's
        ``shift_terminal`` (0 or None: none) stretches the schedule. A
        ``UniPCMultistepScheduler`` config with ``use_flow_sigmas`` (Wan's) shifts by its
        ``flow_shift`` with its spacing (``flow_sigmas``)."""
        train = config.get("num_train_timesteps", 1000)
        spacing = {"num_train_timesteps": train, "one_over_n": one_over_n, "shift_terminal": config.get("shift_terminal") or None}
        if config.get("use_flow_sigmas", False) and not config.get("use_dynamic_shifting", False):
            return cls(model, shift=config.get("flow_shift", 1.0), flow_sigmas=True, **spacing)
        if config.get("use_dynamic_shifting", False):
            if mu_of_steps is not None:
                if steps is None:
                    raise ValueError("mu_of_steps needs steps, the steps whose mu bounds the range")
                return cls(model, mu=mu_of_steps(steps), mu_of_steps=mu_of_steps, **spacing)
            if image_seq_len is None:
                raise ValueError("this scheduler shifts with the resolution: give image_seq_len (the packed latent's token count)")
            return cls(model, mu=flux_mu(image_seq_len, config), **spacing)
        return cls(model, shift=config.get("shift", 1.0), **spacing)

    def get_sigmas(self, n: int) -> Tensor:
        """The model's schedule of ``n`` steps, as diffusers' pipelines build it, in sigma:
        (n + 1,) float64, starting at inf (t = 1), ending in 0.

        SD3 shifts ``linspace(1, t_min, n)``; Flux, Z-Image and FLUX.2 (``one_over_n``)
        ``linspace(1, 1/n, n)``; Wan (``flow_sigmas``) ``linspace(1, 1/N, n + 1)[:-1]``; with ``shift_terminal`` the shifted times t become
        ``1 - (1 - t) (1 - terminal) / (1 - t_last)``.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n must be a positive whole number of steps, got {n!r}")
        factor = self.factor if self.mu_of_steps is None else math.exp(self.mu_of_steps(n))
        if self.flow_sigmas:
            u = torch.linspace(1, 1 / self.num_train_timesteps, n + 1, dtype=torch.float64)[:-1]
        else:
            end = 1 / n if self.one_over_n else self.sigma_to_t(torch.tensor(self.sigma_min, dtype=torch.float64))
            u = torch.linspace(1, float(end), n, dtype=torch.float64)
        sigmas = factor * self.t_to_sigma(u)
        kept = 1 - self.sigma_to_t(sigmas)
        # An affine stretch of 1 - t, which keeps t = 1 (sigma = inf) where it is; one step
        # (t = 1 alone) has nothing to stretch.
        if self.shift_terminal is not None and kept[-1] > 0:
            sigmas = self.t_to_sigma(1 - kept * (1 - self.shift_terminal) / kept[-1])
        return torch.cat([sigmas, u.new_zeros(1)])

    @staticmethod
    def sigma_to_t(sigma: Tensor) -> Tensor:
        """Flow time ``t = sigma / (1 + sigma)``: 1 at sigma = inf, 0 at 0."""
        return 1 / (1 + 1 / sigma)

    @staticmethod
    def t_to_sigma(t: Tensor) -> Tensor:
        """``sigma = t / (1 - t)``: inf at t = 1."""
        return t / (1 - t)

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        sigma = sigma.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        t = self.sigma_to_t(sigma)
        # x = x_t / (1 - t) = x_t (1 + sigma); at t = 1 the caller hands the noise itself
        # (see the module docstring). Dividing by 1 + sigma keeps precision that 1 - t loses near t = 1.
        x_t = torch.where(torch.isinf(sigma), x, x / (1 + sigma))
        v = self.inner_model(x_t, t.flatten(), **kwargs)
        return x_t - t * v.to(x.dtype)
