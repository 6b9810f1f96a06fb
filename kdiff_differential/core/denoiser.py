"""The wrapper: Differential Diffusion around any k-diffusion denoiser."""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Optional

import torch
from einops import rearrange
from torch import Tensor, nn

from .clocks import CLOCKS, Span, find_attribute, inner_models, make_clock, make_span, model_timestep
from .compat import COMPATS, compat_named
from ..maps.reading import latent_map
from .release import RELEASES, make_release, release_map, step_release_map
from .samplers import sampler_named

# The keyword by which an inner denoiser asks for each call's release mask (see DifferentialDenoiser).
RELEASE_MASK = "release_mask"

__all__ = ["COMPATS", "RELEASES", "DifferentialDenoiser"]


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


def _check_strength(strength: Any) -> float:
    if isinstance(strength, Tensor) and strength.numel() == 1:
        strength = strength.item()
    if isinstance(strength, bool) or not isinstance(strength, (int, float)):
        raise TypeError(f"strength must be a number in [0, 1], got {type(strength).__name__}")
    if not 0 <= strength <= 1:
        raise ValueError(f"strength must lie in [0, 1] (1 = release pixels fully; below, the map is blended into the mask), got {strength}")
    return float(strength)


def with_release_mask(kwargs: dict[str, Any], mask: Tensor, x: Tensor) -> dict[str, Any]:
    """``kwargs`` with the blend ``mask`` ((k,) B|1, 1, [F,] H, W) as ``release_mask``
    (k*B, 1, [F,] H, W), x's batch and dtype, where the caller asked for it by naming the key."""
    if RELEASE_MASK not in kwargs:
        return kwargs
    per_call = mask if mask.ndim > x.ndim else mask.unsqueeze(0)
    per_call = per_call.expand(per_call.shape[0], x.shape[0] // per_call.shape[0], *per_call.shape[2:])
    return {**kwargs, RELEASE_MASK: per_call.reshape(x.shape[0], 1, *x.shape[2:]).to(x.dtype)}


def renamed_clock(clock: str, threshold: Optional[str]) -> str:
    """``clock``, or the deprecated ``threshold=`` that named it before (warns)."""
    if threshold is None:
        return clock
    warnings.warn("threshold= is deprecated and will be removed: it is now clock=", FutureWarning, stacklevel=3)
    return threshold


class DifferentialDenoiser(nn.Module):
    """Differential Diffusion around a k-diffusion denoiser: each pixel gets its own strength.

    Hand it to any k-diffusion sampler in place of ``inner``. At every call it reads the
    call's sigma and releases the pixels whose strength s reaches the normalised time
    tau(sigma) (1 at the schedule's start, 0 at its end). Released pixels follow the
    sampler; frozen ones are held to the original, re-noised to the call's sigma.

    Args:
        inner: a k-diffusion denoiser, ``(x, sigma, **kwargs) -> denoised``. Keyword
            arguments (``cond``, ...) go through untouched.
        latent: the clean original, (B, C, H, W) or (C, H, W) (taken as B = 1); or a
            video's, (B, C, F, H, W) with F latent frames.
        change_map: per-pixel strength, 1 = regenerate fully, 0 = keep; (H', W'),
            (1|B, H', W') or (1|B, 1, H', W') at any resolution, resized to H x W.
            Floats in [0, 1], integers as 8-bit grey levels, booleans, arrays or PIL images.
            For a video latent: (H', W') for every frame, or per video frame (T, H', W'),
            (1|B, T, H', W') or (1|B, 1, T, H', W'), brought to the latent frames by
            :func:`~kdiff_differential.maps.reading.latent_frames` (docs/python.md, "Video latents").
        frames_per_latent: for a video latent, how many video frames a latent frame stands
            for after the first, which stands alone (Wan's VAE: 4, so T = 4 (F - 1) + 1).
        sigmas: the schedule the sampler will run (1-D, descending, may end in 0). A
            sampler may run any contiguous slice of it; the ramp spans all of it.
        sigma_min, sigma_max: instead of ``sigmas``, for ``sample_dpm_fast`` and
            ``sample_dpm_adaptive``, which take a range.
        noise: the fixed noise, latent-shaped, that re-noises frozen pixels at every call;
            drawn once from ``generator`` when not given. Exposed as ``self.noise``.
        generator: the ``torch.Generator`` that draws ``noise``.
        strength: 1 releases pixels outright; below 1 the mask is
            ``strength * m + (1 - strength) * s``, as ComfyUI's node does, with m the
            release weight (binary or smooth); 0 gives the map itself as a soft mask
            (under ``compat="comfyui"``, 0 acts as 1, as in ComfyUI's node).
        release: ``"faithful"`` (the default here, in :func:`~kdiff_differential.core.sampling.differential_edit`,
            :func:`~kdiff_differential.edit_image` and the command line), ``"smooth"`` or ``"binary"``.
            Binary (ComfyUI's rule; the diffusers pipelines' is binary on a step-index grid,
            ``compat="diffusers"``) frees a pixel at the first call with ``s >= tau(sigma)``,
            so every pixel released between two schedule levels is released at the same
            call and the map shows as bands, one per step. Smooth gives a pixel the weight
            ``m = clamp((s - tau_lo) / (tau_hi - tau_lo), 0, 1)``, with tau_hi = tau(sigma)
            and tau_lo = tau of the next schedule level below sigma (0 at a level 0 or past
            the ramp's end): a pixel is eased in over the one step before the binary rule
            frees it, in proportion to where its strength falls inside that step, and is
            fully free exactly where binary frees it. The range samplers have no levels:
            there tau_lo = tau_hi - ``RANGE_RAMP``. ``compat="comfyui"`` is always binary.
            ``"faithful"`` eases in over the same step, but linearly in sigma**3 rather
            than in tau (see :class:`~kdiff_differential.core.release.FaithfulRelease`): at
            few steps each strength then changes about as much as in a converged edit,
            where smooth changes more; on a range sampler, and on a schedule of fewer
            than 4 steps (but for Heun's family from 2), it is the smooth rule
            (``release.FAITHFUL_MIN_STEPS``). Tell it the ``sampler`` for Heun's family.
        sampler: the k-diffusion sampler that will run the wrapper (a short name or an
            A1111-style one), or ``None``. Only the faithful release reads it: for
            Heun and the ancestral DPM2 and DPM++ 2S, whose second call of a step comes
            at the next level, that call is masked as at the step's geometric midpoint
            (the wrapper then keeps the previous call's sigma, so run one sampler at a
            time through it); DPM2-ancestral and DPM++ 3M SDE ramp in sigma rather than
            sigma**3 (``release.FAITHFUL_POWERS``).
        clock: ``"timestep"`` (the model's ``sigma_to_t``, found on ``inner`` or its
            ``inner_model`` chain, else log sigma), ``"sigma"`` (log sigma) or ``"step"``
            (a step-index ramp, tau = 1 - i/N; not the diffusers pipelines' rule,
            which frees a pixel a call earlier (SDXL, SD3) or at ``keep <= i/N`` (Flux.1,
            Z-Image), see ``compat``). ``threshold=`` is its deprecated old name.
        compat: ``None``; ``"diffusers"`` for the diffusers community Differential
            Diffusion pipelines exactly (see ``docs/peers.md``): the binary rule by step
            index on ``sigmas`` (:func:`~kdiff_differential.core.release.step_release_map`),
            pre-blend for SDXL and SD3, post-blend for Flux.1 and Z-Image, every pixel
            free at the last call (Z-Image's: a call at t = 0 after the schedule's
            end), the pipeline's map resizing; the denoiser's
            ``diffusers_pipeline`` (set by the model families) picks the pipeline, SDXL's
            where it has none (any eps/v UNet). ``clock`` plays no part; strength must be
            1. On another sampler it is the same rule on the same grid. Or ``"comfyui"``
            for ComfyUI's node exactly: plain bilinear map
            resizing; the nearest training timestep as the clock (ComfyUI's
            ``model_sampling.timestep``) whatever the denoiser's ``quantize``; strength 0
            as 1; strength-0 pixels freed at a last call at the model's sigma_min; a
            ``sigma_min=``/``sigma_max=`` ramp ending at the model's sigma_min; and
            ComfyUI's start in :meth:`noisy_latent`. By default strength-0 pixels are
            never freed.
        keep_map: read ``change_map`` as a keep-map (1 = keep, 0 = change), the
            convention of the official code and the diffusers pipelines.

    ``x`` at call time is (k * B, C, H, W) (a video's: (k * B, C, F, H, W)) for a whole
    k, as when a guidance wrapper concatenates the batch; latent, noise and map repeat k times. The output has x's
    shape and dtype.

    The release mask for the inner denoiser: a call whose keyword arguments hold
    ``release_mask`` (any value, e.g. None in the sampler's ``extra_args``) passes the
    inner denoiser that call's blend mask instead, (k * B, 1, [F,] H, W), 1 = released
    (an inpainting network's mask channel, ``--inpaint-mask released``).
    """

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
        threshold: Optional[str] = None,
        frames_per_latent: int = 4,
    ) -> None:
        super().__init__()
        if not callable(inner):
            raise TypeError(f"inner must be a callable denoiser (x, sigma, **kwargs) -> x0, got {type(inner).__name__}")
        clock = renamed_clock(clock, threshold)
        if clock not in CLOCKS:
            raise ValueError(f"clock must be one of {', '.join(map(repr, CLOCKS))}, got {clock!r}")
        self.policy = policy = compat_named(compat, find_attribute(inner, "diffusers_pipeline"))
        if policy.clocks is not None and clock not in policy.clocks:
            raise ValueError(f"compat={compat!r} reproduces the {' and '.join(policy.clocks)} clock only; got clock={clock!r}")
        if release not in RELEASES:
            raise ValueError(f"release must be one of {', '.join(map(repr, RELEASES))}, got {release!r}")
        if not isinstance(keep_map, bool):
            raise TypeError(f"keep_map must be True or False, got {type(keep_map).__name__}")
        if any(isinstance(model, DifferentialDenoiser) for model in inner_models(inner)):
            warnings.warn(
                "inner already contains a DifferentialDenoiser: every call would blend twice, with two "
                "maps and two noises. Wrap the plain denoiser once.",
                stacklevel=2,
            )
        self.strength = _check_strength(strength)
        if policy.step_rule is not None and self.strength != 1:
            raise ValueError(f"compat={compat!r} reproduces pipelines that have no blend strength: strength must be 1, got {strength}")
        if policy.step_rule is not None and sigmas is None:
            raise ValueError(f"compat={compat!r} releases by step index: give the schedule as sigmas=, not sigma_min=/sigma_max=")
        self.clock_name = clock

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

        if sigmas is not None and not isinstance(sigmas, Tensor):
            raise TypeError(
                f"sigmas must be a torch.Tensor (the sampler's schedule, e.g. torch.tensor(...)), got {type(sigmas).__name__}"
            )
        if sigmas is not None and sigmas.is_floating_point():
            if sigmas.dtype != dtype:
                warnings.warn(
                    f"sigmas are {sigmas.dtype} but the latent is {dtype}: k-diffusion's samplers would "
                    f"promote x to {sigmas.dtype}. Pass dd.sigmas (cast to {dtype}) to the sampler.",
                    stacklevel=2,
                )
            # The sampler's calls see the schedule in x's dtype; measure the ramp there.
            sigmas = sigmas.detach().to(device=device, dtype=dtype)
        self.register_buffer("sigmas", sigmas)
        self.span: Span = make_span(
            sigmas, sigma_min, sigma_max, find_attribute(inner, "sigma_min"),
            range_ends_at_model_floor=policy.range_ends_at_model_floor,
        )
        model_sigma_max = find_attribute(inner, "sigma_max")
        self._model_sigma_max = None if model_sigma_max is None else float(model_sigma_max)

        # The clock: tau(sigma), 1 at the ramp's start, 0 at its end.
        clock_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        timestep = model_timestep(inner, nearest=policy.nearest_timestep) if clock == "timestep" else None
        self.clock = make_clock(clock, self.span, timestep, clock_dtype, device)

        # Per pixel, the largest call sigma at which it is free.
        if policy.step_rule is None:
            strengths = latent_map(
                change_map, latent.shape, keep_map=keep_map, resize=policy.map_resize, dtype=clock_dtype, device=device,
                frames_per_latent=frames_per_latent,
            )
            release_sigma = release_map(self.clock, self.span, strengths, frees_strength_zero=policy.frees_strength_zero)
        else:
            # In float64, where 1 - keep is exact for a float32 keep-map: the pipelines'
            # float32 comparisons with i/N then come out the same, ties included.
            exact = latent_map(
                change_map, latent.shape, keep_map=keep_map, resize=policy.map_resize, dtype=torch.float64, device=device,
                frames_per_latent=frames_per_latent,
            )
            strengths = exact.to(clock_dtype)
            steps = len(self.span.sigmas) - (0 if policy.empty_last_step else 1)
            release_sigma = step_release_map(1 - exact, self.span.sigmas.to(clock_dtype), policy.step_rule, steps)
        self.register_buffer("change_map", strengths.to(dtype))
        self.register_buffer("release_sigma", release_sigma)

        # The rule that turns "free" into a call's blend mask.
        blend = 1.0 if policy.zero_strength_is_one and self.strength == 0 else self.strength
        chosen = None if sampler is None else sampler_named(sampler)[0]
        self.rule = make_release(policy.release or release, strengths, blend, dtype, self.clock, self.span,
                                 release_sigma=self.release_sigma, sampler=chosen)
        self.inner_model = inner

    @property
    def release(self) -> str:
        """The release rule's name, ``"smooth"``, ``"binary"`` or ``"faithful"``."""
        return self.rule.name

    @property
    def compat(self) -> Optional[str]:
        """The compatibility policy's name: ``None``, ``"comfyui"`` or ``"diffusers"``."""
        return self.policy.name

    @property
    def threshold(self) -> str:
        """Deprecated name of :attr:`clock_name`."""
        return self.clock_name

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
        # every call (~3-5 us on CPU, measured) where a reshape costs ~0.6-1 us.
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
        # Each buffer read goes through nn.Module.__getattr__ (~0.6 us on CPU); read once.
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
