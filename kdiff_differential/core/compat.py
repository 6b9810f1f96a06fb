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
    ``sqrt(1 + sigma^2)``. ``step_rule``: the diffusers pipelines' release by step
    index (see :func:`~kdiff_differential.core.release.step_release_map`), ``"pre"`` or
    ``"post"``; ``None`` for the clock's. ``empty_last_step``: the pipeline's N steps
    end with a call at t = 0 that changes nothing, which a sampler's schedule leaves
    out: its thresholds count one step more than the schedule has.
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
    step_rule: Optional[str] = None
    empty_last_step: bool = False

    def problem(self, strength: float, clock: str, ranged_by: Optional[str] = None) -> str:
        """Why this policy cannot reproduce its tool's rule at blend ``strength`` with
        ``clock``, on a noise range given by ``ranged_by`` (a sampler or an argument that
        runs a range instead of a schedule; None: a schedule); '' when it can."""
        if self.clocks is not None and clock not in self.clocks:
            return f"reproduces the {' and '.join(self.clocks)} clock only; got clock={clock}"
        if self.step_rule is not None and ranged_by is not None:
            return f"the diffusers pipelines release by step index; {ranged_by} runs a noise range, not a schedule"
        if self.step_rule is not None and strength != 1:
            return f"the diffusers pipelines have no blend strength; strength={strength:g} must be 1"
        return ""

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
# The diffusers community Differential Diffusion pipelines (huggingface/diffusers
# examples/community, read at 58eb52c0), one policy per pipeline, all named "diffusers":
# the keep-map thresholded against arange(N)/N by step index, the whole map free at the
# last call. SDXL and SD3 blend the re-noised original in before each call ("pre"),
# Flux.1 and Z-Image after each step ("post"); Z-Image's schedule, linspace(1, 0, N)
# shifted, ends with a step from t = 0 to 0. SDXL resizes the map with torchvision's
# Resize (bilinear, no antialiasing on tensors); the others with F.interpolate's default,
# nearest.
DIFFUSERS_PIPELINES: dict[str, Compat] = {
    "sdxl": Compat(name="diffusers", map_resize="bilinear", release="binary", step_rule="pre"),
    "sd3": Compat(name="diffusers", map_resize="nearest", release="binary", step_rule="pre"),
    "flux": Compat(name="diffusers", map_resize="nearest", release="binary", step_rule="post"),
    "z-image": Compat(name="diffusers", map_resize="nearest", release="binary", step_rule="post", empty_last_step=True),
}
COMPATS: dict[Optional[str], Compat] = {
    policy.name: policy for policy in (DEFAULT, COMFYUI, DIFFUSERS_PIPELINES["sdxl"])
}


def compat_named(name: Any, pipeline: Optional[str] = None) -> Compat:
    """The policy ``name`` (``None``, ``"comfyui"`` or ``"diffusers"``); ValueError
    otherwise. ``"diffusers"`` is the rule of the community pipeline ``pipeline`` (a key
    of :data:`DIFFUSERS_PIPELINES`, the denoiser's ``diffusers_pipeline`` attribute),
    SDXL's when ``None``."""
    if name not in COMPATS:
        raise ValueError(f"compat must be one of {', '.join(map(repr, COMPATS))}, got {name!r}")
    if name != "diffusers" or pipeline is None:
        return COMPATS[name]
    if pipeline not in DIFFUSERS_PIPELINES:
        raise ValueError(
            f"the denoiser's diffusers_pipeline must be one of {', '.join(map(repr, DIFFUSERS_PIPELINES))}, got {pipeline!r}"
        )
    return DIFFUSERS_PIPELINES[pipeline]
