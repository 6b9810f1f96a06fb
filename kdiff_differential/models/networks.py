"""diffusers' denoising networks behind the interfaces k-diffusion wraps.

- :class:`DiffusersUNet`: a ``UNet2DConditionModel`` with the CompVis model interface
  (``alphas_cumprod``, ``apply_model(x, t, cond)``), so that k-diffusion's
  ``CompVisDenoiser`` (epsilon) or ``CompVisVDenoiser`` (v-prediction) wrap it like a
  CompVis ``LatentDiffusion``: :func:`compvis_denoiser`.
- :class:`TransformerVelocity`: a flow-matching transformer (SD3, Flux) as a velocity
  model ``(x_t, t, cond=...) -> v``, which
  :class:`~kdiff_differential.models.flow.FlowDenoiser` turns into a k-diffusion denoiser;
  :class:`Experts`, the networks of a family that switches between them by the timestep.

Both run the network in its own dtype (fp16/bf16 on CUDA) and give results in the
sampler's. diffusers is imported inside the functions.
"""

from __future__ import annotations

import types
from typing import Any, Callable, Optional, Protocol

import torch
from torch import Tensor, nn

from ..errors import InputError
from ..core.guidance import Condition


class ControlCall(Protocol):
    """A run's ControlNets as the networks call them (a
    :class:`~kdiff_differential.models.controlnets.ControlRun`): ``at(t)``, those active
    at the call's timestep (None: none is), and their ``residuals`` for a batch of n."""

    def at(self, t: Tensor) -> Optional["ControlCall"]: ...

    def residuals(self, n: int, **inputs: Any) -> dict[str, Any]: ...


# The scheduler config's prediction_type -> the k-diffusion wrapper's name.
PREDICTIONS = {"epsilon": "CompVisDenoiser", "v_prediction": "CompVisVDenoiser"}
# Condition keys that go to the UNet's added_cond_kwargs (SDXL's micro-conditioning).
ADDED_CONDITIONS = ("text_embeds", "time_ids")
# (transformer, x_t (N, C, H, W) in its dtype, t (N,) in [0, 1], cond, the ControlNets
# acting at t or None) -> v like x_t.
VelocityCall = Callable[[nn.Module, Tensor, Tensor, dict[str, Tensor], Optional[ControlCall]], Tensor]


class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DConditionModel`` with the CompVis model interface.

    ``alphas_cumprod`` (T,) is the training schedule (the scheduler's). ``apply_model``
    takes the VP-scaled latent x (N, C, h, w), the timestep t (N,) (k-diffusion gives
    fractional ones) and ``cond``: the text embedding (N, T, D), or a dict of tensors
    with batch N: ``crossattn`` (N, T, D), optionally ``text_embeds`` and ``time_ids``
    (SDXL's added conditions) and ``concat`` (N, C', h, w), channels appended to x
    (inpainting UNets; see :func:`inpainting_channels` for ``release_mask``). ``control``,
    a :class:`~kdiff_differential.models.controlnets.ControlRun`, adds its ControlNets'
    residuals. It returns the UNet's prediction (eps or v) in x's dtype.
    """

    alphas_cumprod: Tensor
    unet: Any  # a diffusers UNet2DConditionModel

    def __init__(self, unet: nn.Module, alphas_cumprod: Tensor) -> None:
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod.detach().float())

    def apply_model(
        self, x: Tensor, t: Tensor, cond: Condition, control: Optional[ControlCall] = None,
        release_mask: Optional[Tensor] = None, **kwargs: Any,
    ) -> Tensor:
        dtype = self.unet.dtype
        parts = cond if isinstance(cond, dict) else {"crossattn": cond}
        sample = x if "concat" not in parts else torch.cat([x, inpainting_channels(parts, release_mask, x).to(x.dtype)], dim=1)
        added = {key: parts[key].to(dtype) for key in ADDED_CONDITIONS if key in parts}
        inputs = {"encoder_hidden_states": parts["crossattn"].to(dtype), "added_cond_kwargs": added or None}
        control = None if control is None else control.at(t)
        if control is not None:
            # The ControlNet sees the latent without the inpainting channels, as in diffusers.
            kwargs.update(control.residuals(x.shape[0], sample=x.to(dtype), timestep=t, **inputs))
        out = self.unet(sample.to(dtype), t, **inputs, **kwargs).sample
        return out.to(x.dtype)


def inpainting_channels(cond: dict[str, Tensor], release_mask: Optional[Tensor], x: Tensor) -> Tensor:
    """An inpainting network's extra input channels for one call: (N, C', h, w).

    ``cond["concat"]`` (1|N, C', h, w) is the mask channel(s) then the masked image's
    latent. With ``--inpaint-mask fixed`` that is all, for every call. With ``released``
    the condition also holds ``concat_kept``, the same channels with nothing masked
    (mask 0, the image's own latent), ``concat`` is them with everything the map
    touches masked (mask 1), and ``release_mask`` (the wrapper's blend mask, (M, 1, h, w),
    1 = released; M divides x's batch N, the guidance batch repeating it) weighs the two
    at each pixel: the network is told the pixels released so far.
    """
    changed = cond["concat"]
    if release_mask is None or "concat_kept" not in cond:
        return changed
    weight = release_mask.repeat(x.shape[0] // release_mask.shape[0], 1, 1, 1).to(changed.dtype)
    return torch.lerp(cond["concat_kept"], changed, weight)


def compvis_denoiser(unet: nn.Module, scheduler_config: dict[str, Any], diffusers_pipeline: Optional[str] = None) -> nn.Module:
    """A k-diffusion denoiser (x, sigma, cond=...) -> x0 for a diffusers UNet.

    ``scheduler_config`` is the scheduler's config (``scheduler/scheduler_config.json``):
    its betas give ``alphas_cumprod`` and its ``prediction_type`` picks
    ``CompVisDenoiser`` ("epsilon") or ``CompVisVDenoiser`` ("v_prediction").
    ``diffusers_pipeline``: the community pipeline whose rule ``compat="diffusers"`` follows.
    """
    import k_diffusion as K
    from diffusers import DDPMScheduler

    prediction = scheduler_config.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise InputError(
            f"the scheduler's prediction_type is {prediction!r}; supported: {', '.join(PREDICTIONS)}"
        )
    # DDPMScheduler reads every beta schedule diffusers knows (and trained_betas) the same way.
    betas = {key: scheduler_config[key] for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas") if key in scheduler_config}
    ddpm: Any = DDPMScheduler(**betas)  # its betas as alphas_cumprod, set when made
    alphas_cumprod = ddpm.alphas_cumprod
    wrap = getattr(K.external, PREDICTIONS[prediction])
    denoiser = wrap(DiffusersUNet(unet, alphas_cumprod))
    # The instance's get_sigmas (the 'model' schedule) is the folder's scheduler, not
    # k-diffusion's even spacing in t: few-step checkpoints are trained on its timesteps.
    # A bound method, so that a copy of the denoiser reads its own levels.
    denoiser.get_sigmas = types.MethodType(lambda self, n=None: scheduler_sigmas(scheduler_config, self.sigmas, n), denoiser)
    denoiser.diffusers_pipeline = diffusers_pipeline
    return denoiser


def scheduler_sigmas(scheduler_config: dict[str, Any], sigmas: Tensor, n: Optional[int]) -> Tensor:
    """The noise levels of ``n`` steps as diffusers' own scheduler of the folder spaces
    them: (n + 1,) float32, descending, ending in 0.

    ``scheduler_config`` is the folder's ``scheduler_config.json`` (its ``_class_name``
    picks the scheduler; one diffusers lacks counts as EulerDiscreteScheduler); its
    ``timestep_spacing`` (``leading`` with ``steps_offset``, ``linspace``, ``trailing``)
    and the scheduler's own rules (DDIM's rounding, LCM's skipping) give the timesteps.
    The levels are the scheduler's ``sigmas`` where it keeps them (the Euler and DPM
    schedulers, with their Karras/exponential options), else ``sigmas`` (T,), the
    training levels, at its timesteps, interpolated linearly as diffusers' Euler does.
    Whole timesteps (``leading``, ``trailing``) give training levels exactly, so the
    UNet sees diffusers' timesteps; ``n`` None is every training level.
    """
    import diffusers
    import numpy as np

    if n is None:
        return torch.cat([sigmas.flip(0), sigmas.new_zeros(1)]).float()
    kind = getattr(diffusers, str(scheduler_config.get("_class_name")), None)
    if not (isinstance(kind, type) and issubclass(kind, diffusers.SchedulerMixin)):
        kind = diffusers.EulerDiscreteScheduler
    scheduler = kind.from_config(scheduler_config)
    scheduler.set_timesteps(n)
    own = getattr(scheduler, "sigmas", None)
    if isinstance(own, Tensor) and own.ndim == 1 and len(own) >= n:
        levels = own[:n].double()
    else:
        table = sigmas.double().cpu().numpy()
        levels = torch.from_numpy(np.interp(scheduler.timesteps.double().numpy(), np.arange(len(table)), table))
    return torch.cat([levels, levels.new_zeros(1)]).float()


class Experts(nn.Module):
    """A model's denoising networks, for a family that runs more than one (Wan 2.2
    A14B's high- and low-noise experts): ``experts`` in order, ``dtype`` the first's;
    the family's call picks one by the timestep, from the settings it gives
    (``boundary``: the timestep where the second takes over, None: the first alone;
    ``per_token``: one timestep per token)."""

    def __init__(self, experts: list[nn.Module]) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.boundary: Optional[float] = None
        self.per_token = False

    @property
    def dtype(self) -> torch.dtype:
        dtype: torch.dtype = getattr(self.experts[0], "dtype")  # a diffusers model's
        return dtype


class TransformerVelocity(nn.Module):
    """A flow transformer as a velocity model ``(x_t, t, cond=...) -> v``.

    ``call`` is the family's way of calling it (see :data:`VelocityCall`; Flux packs the
    latent into tokens there). ``x_t`` (N, C, H, W) and ``t`` (N,) come in the
    sampler's dtype, ``cond`` is a dict of tensors with batch 1 or N (an inpainting
    transformer's ``concat``, with ``release_mask``, as :func:`inpainting_channels`),
    ``control`` a :class:`~kdiff_differential.models.controlnets.ControlRun`; the
    transformer runs in its own dtype and v is returned in x_t's; ``t`` too, unless
    ``exact_time`` (Wan's pipelines pass float32 timesteps and switch experts by them).
    """

    transformer: Any  # a diffusers transformer, or Experts

    def __init__(self, transformer: nn.Module, call: VelocityCall, exact_time: bool = False) -> None:
        super().__init__()
        self.transformer, self.call, self.exact_time = transformer, call, exact_time

    def forward(
        self, x_t: Tensor, t: Tensor, *, cond: dict[str, Tensor], control: Optional[ControlCall] = None,
        release_mask: Optional[Tensor] = None,
    ) -> Tensor:
        dtype = self.transformer.dtype
        if "concat" in cond:  # an inpainting input: its channels for this call (see inpainting_channels)
            cond = {key: value for key, value in cond.items() if key != "concat_kept"} | {"concat": inpainting_channels(cond, release_mask, x_t)}
        cond = {key: value.to(dtype) for key, value in cond.items()}
        # The window is read at t in the sampler's dtype, as it was set (bf16 would round it).
        control = None if control is None else control.at(t)
        return self.call(self.transformer, x_t.to(dtype), t if self.exact_time else t.to(dtype), cond, control).to(x_t.dtype)
