"""Other tools' Differential Diffusion rules, run on our denoisers for the banding
benchmark (``python -m samplers.banding --release comfyui,diffusers-pre,...``).

Each peer is the release rule of another implementation on the same schedule, noise and
sampler as ours (see ``docs/peers.md``):

``comfyui``
    ComfyUI's node: ``compat="comfyui"``, binary on the nearest training timestep, ``>=``.
``diffusers-pre``
    the diffusers SDXL and SD3 pipelines: ``compat="diffusers"``, pre-blend.
``diffusers-post``
    the diffusers Flux.1 and Z-Image pipelines: ``compat="diffusers"`` on a denoiser that
    names the Flux.1 pipeline, post-blend.
``invokeai``
    InvokeAI's gradient masks: after each step, pixels with ``mask < t_prev + 1e-4`` are
    set to the original noised to the step's end (``t_prev``, the time it steps to), so
    a pixel's prediction counts from the first call with ``mask >= t_prev + 1e-4``;
    ``t`` is our timestep clock (normalised, 0 at the schedule's end). It is binary: the
    wrapper's binary release with each pixel's release sigma set by that rule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

PEERS = ("comfyui", "diffusers-pre", "diffusers-post", "invokeai")
# InvokeAI's epsilon in its mask comparison.
INVOKEAI_EPSILON = 1e-4


class NamedPipeline(nn.Module):
    """``inner`` naming the diffusers pipeline whose rule ``compat="diffusers"`` follows,
    as the model families' denoisers do."""

    def __init__(self, inner: nn.Module, pipeline: str) -> None:
        super().__init__()
        self.inner_model, self.diffusers_pipeline = inner, pipeline

    def forward(self, x: Tensor, sigma: Tensor, **kwargs: Any) -> Tensor:
        return self.inner_model(x, sigma, **kwargs)


def invokeai_edit(denoiser: nn.Module, latent: Tensor, change_map: Tensor, sampler: str, steps: int, seed: int) -> Tensor:
    """InvokeAI's rule on ``sampler`` over our default schedule (karras), from ``seed``
    as :func:`~kdiff_differential.core.sampling.differential_edit` seeds: the edited latent."""
    from kdiff_differential.core.denoiser import DifferentialDenoiser
    from kdiff_differential.core.sampling import call_sampler
    from kdiff_differential.core.release import LEVEL_SLACK
    from kdiff_differential.core.samplers import sampler_named
    from kdiff_differential.core.schedules import make_sigmas

    chosen, _ = sampler_named(sampler)
    torch.manual_seed(seed)
    sigmas = make_sigmas(denoiser, steps, "karras", 1.0).to(dtype=latent.dtype)
    with torch.no_grad():
        dd = DifferentialDenoiser(denoiser, latent, change_map, sigmas=sigmas, release="binary",
                                  generator=torch.Generator().manual_seed(seed))
        ends = dd.clock(sigmas[1:].to(dd.release_sigma.dtype)).clamp(min=0)
        ends[sigmas[1:] == 0] = 0
        # Held through call i while mask < t_prev(i) + eps; the held calls are a prefix.
        held = (dd.change_map.to(ends.dtype).unsqueeze(-1) < ends + INVOKEAI_EPSILON).sum(-1)
        levels = torch.cat([sigmas, sigmas.new_zeros(1)]).to(dd.release_sigma.dtype) * (1 + LEVEL_SLACK)
        dd.release_sigma.copy_(levels[held])
        run = dict(extra_args={}, callback=lambda info: None, disable=True)
        return call_sampler(chosen, dd, dd.noisy_latent(), sigmas, run)


def peer_edit(peer: str, denoiser: nn.Module, latent: Tensor, change_map: Tensor, sampler: str, steps: int, seed: int) -> Tensor:
    """The edited latent under ``peer``'s rule (one of :data:`PEERS`)."""
    from kdiff_differential.core.sampling import differential_edit

    if peer not in PEERS:
        raise ValueError(f"peer must be one of {', '.join(PEERS)}, got {peer!r}")
    if peer == "invokeai":
        return invokeai_edit(denoiser, latent, change_map, sampler, steps, seed)
    if peer == "diffusers-post":
        denoiser = NamedPipeline(denoiser, "flux")
    compat = "comfyui" if peer == "comfyui" else "diffusers"
    return differential_edit(denoiser, latent, change_map, sampler=sampler, steps=steps, seed=seed, compat=compat).result
