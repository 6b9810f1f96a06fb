"""Compatibility policies: where the wrapper follows another tool's code instead of its
own default choices. One object per policy, consulted by :class:`DifferentialDenoiser`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor


@dataclass(frozen=True)
class Compat:
    """The choices in which a policy departs from the default.

    ``map_resize``: how the change map is brought to latent size (``"antialias"`` area
    averaging, or plain ``"bilinear"``). ``release``: the release rule the policy
    imposes, or ``None`` for the caller's. ``clocks``: the clocks it can reproduce.
    ``nearest_timestep``: the timestep clock on the nearest training level, whatever
    the denoiser's ``quantize``. ``zero_strength_is_one``: ``strength=0`` acts as 1.
    ``frees_strength_zero``: the rule ``s >= tau`` everywhere, so strength-0 pixels are
    freed at a last call at the ramp's end. ``range_ends_at_model_floor``: a
    ``sigma_min=``/``sigma_max=`` ramp ends at the model's sigma_min.
    ``unit_variance_start``: the start at the model's sigma_max is scaled to
    ``sqrt(1 + sigma^2)``.
    """

    name: Optional[str] = None
    map_resize: str = "antialias"
    release: Optional[str] = None
    clocks: Optional[tuple[str, ...]] = None
    nearest_timestep: bool = False
    zero_strength_is_one: bool = False
    frees_strength_zero: bool = False
    range_ends_at_model_floor: bool = False
    unit_variance_start: bool = False

    def start_level(self, sigma: float, model_sigma_max: Optional[float], latent: Tensor) -> Any:
        """The noise scale of the sampler's start at ``sigma``: ``sigma`` itself, or
        ``sqrt(1 + sigma^2)`` at or above the model's sigma_max (within a relative 1e-5)
        under ``unit_variance_start``, computed in the latent's dtype (dpm_adaptive's
        step control turns a one-ulp difference in the start into 0.09 at the end)."""
        if not self.unit_variance_start or model_sigma_max is None:
            return sigma
        start = float(sigma)
        if not (math.isclose(model_sigma_max, start, rel_tol=1e-5) or start > model_sigma_max):
            return sigma
        level = torch.as_tensor(start, dtype=latent.dtype, device=latent.device)
        return torch.sqrt(1.0 + level**2.0)


DEFAULT = Compat()
# ComfyUI's DifferentialDiffusion node with KSamplerX0Inpaint and KSAMPLER.sample
# (Comfy-Org/ComfyUI a125cd84): prepare_mask's bilinear resize, the binary rule on the
# nearest training timestep (model_sampling.timestep), `if strength and strength < 1`,
# `mask >= threshold` everywhere, the full schedule handed to the range samplers, and
# the start noise scaled at full denoise.
COMFYUI = Compat(
    name="comfyui",
    map_resize="bilinear",
    release="binary",
    clocks=("timestep",),
    nearest_timestep=True,
    zero_strength_is_one=True,
    frees_strength_zero=True,
    range_ends_at_model_floor=True,
    unit_variance_start=True,
)
COMPATS: dict[Optional[str], Compat] = {policy.name: policy for policy in (DEFAULT, COMFYUI)}


def compat_named(name: Any) -> Compat:
    """The policy ``name`` (``None`` or ``"comfyui"``); ValueError otherwise."""
    if name not in COMPATS:
        raise ValueError(f"compat must be one of {', '.join(map(repr, COMPATS))}, got {name!r}")
    return COMPATS[name]
