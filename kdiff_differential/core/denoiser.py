"""The wrapper: Differential Diffusion around any k-diffusion denoiser."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from ..choices import CLOCKS, RELEASES
from ..maps.latent import latent_map
from .clocks import Span, find_attribute, inner_models, make_clock, make_span, model_timestep
from .compat import Compat, compat_named
from .release import make_release, release_map, step_release_map
from .samplers import sampler_named

# The keyword by which an inner denoiser asks for each call's release mask (see DifferentialDenoiser).
RELEASE_MASK = "release_mask"


def _check_latent(latent: Any) -> Tensor:
    if not isinstance(latent, Tensor):
        raise TypeError(f"latent must be a torch.Tensor, got {type(latent).__name__}")
    if latent.ndim not in (3, 4, 5):
        raise ValueError(
            f"latent must be (C, H, W), (B, C, H, W) or a video's (B, C, F, H, W), got shape {tuple(latent.shape)}"
        )
    if not latent.is_floating_point():
        raise TypeError(f"latent must be a float tensor, got {latent.dtype}")
    if not torch.isfinite(latent).all():
        raise ValueError("latent must be finite, got NaN or inf")
    return latent.detach()


def with_release_mask(kwargs: dict[str, Any], mask: Tensor, x: Tensor) -> dict[str, Any]:
    """``kwargs`` with the blend ``mask`` ((k,) B|1, 1, [F,] H, W) as ``release_mask``
    (k*B, 1, [F,] H, W), x's batch and dtype, where the caller asked for it by naming the key."""
    if RELEASE_MASK not in kwargs:
        return kwargs
    per_call = mask if mask.ndim > x.ndim else mask.unsqueeze(0)
    per_call = per_call.expand(per_call.shape[0], x.shape[0] // per_call.shape[0], *per_call.shape[2:])
    return {**kwargs, RELEASE_MASK: per_call.reshape(x.shape[0], 1, *x.shape[2:]).to(x.dtype)}


class DifferentialDenoiser(nn.Module):
    """Differential Diffusion around a k-diffusion denoiser: each pixel its own strength.

    Hand it to any k-diffusion sampler in place of ``inner`` (``(x, sigma, **kwargs) ->
    denoised``; keyword arguments go through). At every call it reads the call's sigma,
    lets the pixels whose strength has been reached follow the sampler (eased in by the
    ``release`` rule: ``"faithful"``, ``"smooth"`` or ``"binary"``) and holds the others
    to the original ``latent``, re-noised to that sigma with one fixed ``noise``.

    Shapes: ``latent`` (C, H, W), (B, C, H, W) or a video's (B, C, F, H, W); ``change_map``
    in [0, 1], 1 = change, 0 = keep, (H', W'), (1|B, H', W') or (1|B, 1, H', W') at any
    resolution (a video: also one per frame, (T, H', W'), brought to the latent frames,
    ``frames_per_latent`` video frames each after the first); ``x`` at call time
    (k*B, C, [F,] H, W), as when a guidance wrapper concatenates the batch.

    ``sigmas``: the schedule the sampler runs (or ``sigma_min``/``sigma_max`` for the range
    samplers). ``clock``: how a sigma becomes the normalised time tau ("timestep",
    "sigma", "step"). ``strength`` < 1 blends the map into the mask, as ComfyUI's node.
    ``sampler``: the sampler that will run it, which the faithful rule adapts to.
    ``compat``: ``"comfyui"`` or ``"diffusers"`` reproduces that tool's rule exactly.
    ``keep_map``: read the map as 1 = keep. Every argument, the rules and a call's steps:
    docs/python.md ("DifferentialDenoiser") and docs/semantics.md.
    """

    latent: Tensor
    noise: Tensor
    sigmas: Optional[Tensor]
    change_map: Tensor
    release_sigma: Tensor
    inner_model: Callable[..., Tensor]

    def __init__(
        self,
        inner: Callable[..., Tensor],
        latent: Tensor,
        change_map: Any,
        *,
        sigmas: Optional[Tensor] = None,
        sigma_min: Optional[float] = None,
        sigma_max: Optional[float] = None,
        noise: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        strength: float = 1.0,
        clock: str = "timestep",
        compat: Optional[str] = None,
        keep_map: bool = False,
        release: str = "faithful",
        sampler: Optional[str] = None,
        frames_per_latent: int = 4,
    ) -> None:
        super().__init__()
        self.policy = self._check_choices(inner, strength, clock, compat, release, keep_map, ranged=sigmas is None)
        self.strength, self.clock_name = float(strength.item() if isinstance(strength, Tensor) else strength), clock
        self._hold_original(latent, noise, generator)
        self._time_the_ramp(inner, sigmas, sigma_min, sigma_max)
        strengths = self._find_release_sigmas(change_map, keep_map, frames_per_latent)
        blend = 1.0 if self.policy.zero_strength_is_one and self.strength == 0 else self.strength
        chosen = None if sampler is None else sampler_named(sampler)[0]
        self.rule = make_release(self.policy.release or release, strengths, blend, self.latent.dtype, self.clock, self.span,
                                 release_sigma=self.release_sigma, sampler=chosen)
        self.inner_model = inner

    def _check_choices(self, inner: Any, strength: Any, clock: str, compat: Optional[str], release: str, keep_map: Any,
                       ranged: bool) -> Compat:
        """The arguments that choose the rules, checked; the compat policy they run under."""
        if not callable(inner):
            raise TypeError(f"inner must be a callable denoiser (x, sigma, **kwargs) -> x0, got {type(inner).__name__}")
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(map(repr, CLOCKS))}, got {clock!r}")
        if release not in RELEASES:
            raise ValueError(f"release must be one of {', '.join(map(repr, RELEASES))}, got {release!r}")
        if not isinstance(keep_map, bool):
            raise TypeError(f"keep_map must be True or False, got {type(keep_map).__name__}")
        if isinstance(strength, Tensor) and strength.numel() == 1:
            strength = strength.item()
        if isinstance(strength, bool) or not isinstance(strength, (int, float)):
            raise TypeError(f"strength must be a number in [0, 1], got {type(strength).__name__}")
        if not 0 <= strength <= 1:
            raise ValueError(f"strength must lie in [0, 1] (1 = release pixels fully; below, the map is blended into the mask), got {strength}")
        if any(isinstance(model, DifferentialDenoiser) for model in inner_models(inner)):
            warnings.warn("inner already contains a DifferentialDenoiser: every call would blend twice, with two "
                          "maps and two noises. Wrap the plain denoiser once.", stacklevel=3)
        policy = compat_named(compat, find_attribute(inner, "diffusers_pipeline"))
        problem = policy.problem(float(strength), clock, ranged_by="sigma_min=/sigma_max=" if ranged else None)
        if problem:
            raise ValueError(f"compat={compat!r}: {problem}")
        return policy

    def _hold_original(self, latent: Any, noise: Optional[Tensor], generator: Optional[torch.Generator]) -> None:
        """The buffers frozen pixels are held to: ``latent`` (B, C, [F,] H, W) and the fixed ``noise``."""
        given = _check_latent(latent)
        latent = rearrange(given, "c h w -> 1 c h w") if given.ndim == 3 else given
        dtype, device = latent.dtype, latent.device
        if noise is None:
            noise = torch.randn(latent.shape, generator=generator, dtype=dtype, device=device)
        elif generator is not None:
            raise ValueError("give noise= or generator= (to draw the noise), not both")
        elif not isinstance(noise, Tensor):
            raise TypeError(f"noise must be a torch.Tensor, got {type(noise).__name__}")
        elif noise.shape not in (given.shape, latent.shape):
            raise ValueError(f"noise must have the latent's shape {tuple(given.shape)}, got {tuple(noise.shape)}")
        self.register_buffer("latent", latent)
        # sigma (k*B,) as (k, B, 1, ...) against the latent's (B, C, [F,] H, W).
        self._level_shape = (-1, latent.shape[0], *(1,) * (latent.ndim - 1))
        self.register_buffer("noise", noise.detach().reshape(latent.shape).to(device=device, dtype=dtype))

    def _time_the_ramp(self, inner: Any, sigmas: Optional[Tensor], sigma_min: Optional[float], sigma_max: Optional[float]) -> None:
        """The schedule (a buffer), the span of noise levels the ramp covers, and the clock over it."""
        dtype, device = self.latent.dtype, self.latent.device
        if sigmas is not None and not isinstance(sigmas, Tensor):
            raise TypeError(
                f"sigmas must be a torch.Tensor (the sampler's schedule, e.g. torch.tensor(...)), got {type(sigmas).__name__}"
            )
        if sigmas is not None and sigmas.is_floating_point():
            if sigmas.dtype != dtype:
                warnings.warn(
                    f"sigmas are {sigmas.dtype} but the latent is {dtype}: k-diffusion's samplers would "
                    f"promote x to {sigmas.dtype}. Pass dd.sigmas (cast to {dtype}) to the sampler.",
                    stacklevel=3,
                )
            # The sampler's calls see the schedule in x's dtype; measure the ramp there.
            sigmas = sigmas.detach().to(device=device, dtype=dtype)
        self.register_buffer("sigmas", sigmas)
        self.span: Span = make_span(
            sigmas, sigma_min, sigma_max, find_attribute(inner, "sigma_min"),
            range_ends_at_model_floor=self.policy.range_ends_at_model_floor,
        )
        model_sigma_max = find_attribute(inner, "sigma_max")
        self._model_sigma_max = None if model_sigma_max is None else float(model_sigma_max)
        # tau(sigma): 1 at the ramp's start, 0 at its end.
        timestep = model_timestep(inner, nearest=self.policy.nearest_timestep) if self.clock_name == "timestep" else None
        self.clock = make_clock(self.clock_name, self.span, timestep, self._clock_dtype, device)

    @property
    def _clock_dtype(self) -> torch.dtype:
        return torch.float64 if self.latent.dtype == torch.float64 else torch.float32

    def _find_release_sigmas(self, change_map: Any, keep_map: bool, frames_per_latent: int) -> Tensor:
        """The map at the latent's size (a buffer), and per pixel the largest call sigma at
        which it is free (``release_sigma``); returns the map in the clock's dtype."""
        policy, clock_dtype, latent = self.policy, self._clock_dtype, self.latent
        read: dict[str, Any] = dict(keep_map=keep_map, resize=policy.map_resize, device=latent.device,
                                    frames_per_latent=frames_per_latent)
        if policy.step_rule is None:
            strengths = latent_map(change_map, latent.shape, dtype=clock_dtype, **read)
            release_sigma = release_map(self.clock, self.span, strengths, frees_strength_zero=policy.frees_strength_zero)
        else:
            # In float64, where 1 - keep is exact for a float32 keep-map: the pipelines'
            # float32 comparisons with i/N then come out the same, ties included.
            exact = latent_map(change_map, latent.shape, dtype=torch.float64, **read)
            strengths = exact.to(clock_dtype)
            sigmas = self.span.sigmas
            assert sigmas is not None, "a step rule needs a schedule"  # Compat.problem refused a range
            steps = len(sigmas) - (0 if policy.empty_last_step else 1)
            release_sigma = step_release_map(1 - exact, sigmas.to(clock_dtype), policy.step_rule, steps)
        self.register_buffer("change_map", strengths.to(latent.dtype))
        self.register_buffer("release_sigma", release_sigma)
        return strengths

    @property
    def release(self) -> str:
        """The release rule's name, ``"smooth"``, ``"binary"`` or ``"faithful"``."""
        return self.rule.name

    @property
    def compat(self) -> Optional[str]:
        """The compatibility policy's name: ``None``, ``"comfyui"`` or ``"diffusers"``."""
        return self.policy.name

    def mask(self, sigma: Any) -> Tensor:
        """The blend mask at noise level ``sigma`` (a number or a [k*B] tensor).

        Shape (k, B or 1, 1, H, W) for a tensor sigma, (B or 1, 1, H, W) for a number (a
        video latent's: (k, B or 1, 1, F, H, W), (B or 1, 1, F, H, W));
        1 = the pixel follows the sampler, 0 = held to the original.
        """
        if not isinstance(sigma, Tensor) or sigma.ndim == 0:
            level = torch.full((self.latent.shape[0],), float(sigma), device=self.release_sigma.device)
            return self._blend_weights(level)[0]
        return self._blend_weights(sigma)

    def noisy_latent(self, sigma: Optional[float] = None) -> Tensor:
        """The original re-noised with ``self.noise`` to ``sigma`` (default: the ramp's
        start): the x a sampler starts from, (B, C, H, W).

        Under ``compat="comfyui"``, at or above the model's sigma_max (within ComfyUI's
        relative 1e-5), the noise is scaled by sqrt(1 + sigma^2), as ComfyUI's
        ``KSAMPLER.sample`` does at full denoise."""
        level = self.span.sigma_from if sigma is None else sigma
        return self.latent + self.noise * self.policy.start_level(level, self._model_sigma_max, self.latent)

    def start_from_noise(self, sigma_next: float, **kwargs: Any) -> Tensor:
        """The first step of a schedule that starts at t = 1 (sigma = inf), around a flow
        denoiser (see :mod:`~kdiff_differential.models.flow`): (B, C, H, W).

        At t = 1 every pixel, frozen or free, is pure noise (``self.noise``). The model's
        prediction there (``kwargs``: the sampler's ``extra_args``) is kept where the
        wrapper releases pixels at the start, the original elsewhere; the result is
        re-noised to ``sigma_next`` with the same noise. This is the sampler's x at
        ``sigma_next``: run the sampler on ``self.sigmas[1:]``.
        """
        noise = self.noise
        mask = self.mask(math.inf)
        denoised = self.inner_model(noise, noise.new_full((noise.shape[0],), math.inf), **with_release_mask(kwargs, mask, noise))
        x0 = torch.lerp(self.latent, denoised.to(noise.dtype), mask)
        return x0 + noise * sigma_next

    def finish(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Take a sampler's output from the lowest level it reached to sigma 0, (k*B, C, H, W).

        ``sample_dpm_fast`` and ``sample_dpm_adaptive`` stop at their ``sigma_min`` with that
        much noise left, so kept pixels would end at ``latent + noise * sigma_min``. One more
        call at that level, with the sampler's ``extra_args`` as ``kwargs``, returns the
        denoised image: kept pixels become the latent exactly, as the other samplers' last
        step to sigma 0 does. On a schedule's output (already at sigma 0) it is not needed.
        """
        sigma = torch.full((x.shape[0],), self.span.sigma_last, dtype=x.dtype, device=x.device)
        return self(x, sigma, **kwargs)

    def _per_image(self, sigma: Tensor) -> Tensor:
        """sigma (k*B,) as (k, B, 1, 1, 1) (a video's: (k, B, 1, 1, 1, 1)), to broadcast against the latent."""
        # reshape, not rearrange, on the per-call path: einops looks its pattern up at
        # every call, which costs several reshapes.
        return sigma.reshape(self._level_shape)

    def _blend_weights(self, sigma: Tensor) -> Tensor:
        """The blend mask (k, B, 1, [F,] H, W) for a call's sigma (k*B,)."""
        release_sigma = self.release_sigma
        sigma = sigma.to(release_sigma.dtype)
        # .forward, not the module call: its hook machinery costs more than the rule's own
        # arithmetic at this size (the rules and clocks below do the same).
        return self.rule.forward(self.change_map, release_sigma, sigma, self._per_image(sigma))

    def _check_call(self, x: Any, sigma: Any) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        batch, *chw = self.latent.shape
        if x.ndim != len(chw) + 1 or list(x.shape[1:]) != chw or x.shape[0] % batch:
            raise ValueError(
                f"x must be (k*{batch}, {', '.join(map(str, chw))}) for a whole k, matching the latent, "
                f"got shape {tuple(x.shape)}"
            )
        if not isinstance(sigma, Tensor):
            sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 0 or sigma.shape == (1,):
            return sigma.reshape(1).expand(x.shape[0])
        if sigma.shape != (x.shape[0],):
            raise ValueError(f"sigma must be a number or shape ({x.shape[0]},), got shape {tuple(sigma.shape)}")
        return sigma

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        """Denoise ``x`` (k*B, C, [F,] H, W) at noise level ``sigma`` (k*B,), like ``inner``."""
        sigma = self._check_call(x, sigma)
        # Each buffer read goes through nn.Module.__getattr__, as dear as a small kernel; read once.
        latent = self.latent
        level = self._per_image(sigma)
        # (k*B, C, H, W) <-> (k, B, C, H, W) by reshape, not rearrange: see _per_image.
        xs = x.reshape(-1, *latent.shape).to(latent.dtype)

        # Release the pixels whose strength reaches this noise level's tau (eased in
        # over the step before, with release="smooth" or "faithful"); the faithful rule,
        # told Heun, masks Heun's second call of a step as at the step's midpoint.
        mask = self._blend_weights(self.rule.call_sigma(sigma))

        # Hold frozen pixels to the original, re-noised to this sigma with the fixed noise.
        frozen = torch.addcmul(latent, self.noise, level.to(latent.dtype))
        xs = torch.lerp(frozen, xs, mask)

        # Denoise.
        denoised = self.inner_model(xs.reshape(x.shape), sigma, **with_release_mask(kwargs, mask, x))

        # Frozen pixels denoise to the original itself.
        out = torch.lerp(latent, denoised.reshape(xs.shape).to(latent.dtype), mask)
        return out.reshape(x.shape).to(x.dtype)

    def extra_repr(self) -> str:
        return (
            f"latent={tuple(self.latent.shape)}, clock={self.clock_name!r}, release={self.release!r}, "
            f"strength={self.strength}, "
            f"compat={self.compat!r}, sigma_from={self.span.sigma_from:g}, sigma_to={self.span.sigma_to:g}"
        )
