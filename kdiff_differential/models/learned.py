"""A small trained denoiser: a measuring model that generalises, as real models do.

The built-in model (:mod:`.builtin`) is the exact denoiser of four photographs: it
memorises them. This one is a 1.2M-parameter convolutional U-Net (k-diffusion's
``ImageDenoiserModelV1``, no attention) trained on crops of other photographs that ship
inside scikit-image and matplotlib (``samplers/train_learned.py``), so that it denoises
smoothly and generalises: a measuring model for the picture-quality rules, on the built-in
model's pixel space and clock.

It sits behind k-diffusion's ``CompVisDenoiser`` (eps), as the built-in model does, with
the built-in model's training schedule (:func:`.builtin.pixel_alphas_cumprod`, sigma 0.01
to 10): the same path, the same ``sigma_to_t`` clock, the same schedules. Inside, the
network is preconditioned as Karras et al.'s (k-diffusion's ``layers.Denoiser``): its
output is the noise at low sigma and the image at high sigma, turned into eps for the
wrapper. Trained as a plain eps network it was 4x worse than the trivial predictor at
sigma 5 (eps errors are multiplied by sigma); ``CompVisVDenoiser`` (``prediction="v"``)
gives the same denoiser to float rounding. It runs on RGB pixels in [-1, 1] of any size
(padded inside to a multiple of 16).

The weights (``data/learned.pt``, float16) load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import k_diffusion as K
import torch
import torch.nn.functional as F
from k_diffusion.models.image_v1 import ImageDenoiserModelV1
from torch import Tensor, nn

from .builtin import pixel_alphas_cumprod

WEIGHTS = Path(__file__).with_name("data") / "learned.pt"
FORMAT = "kdiff-differential learned denoiser"
PREDICTIONS = ("eps", "v")
# The preconditioner's data standard deviation: about that of photographs in [-1, 1].
SIGMA_DATA = 0.5
# k-diffusion's ImageDenoiserModelV1 arguments. Patches of 2x2 pixels, then four stages
# of one residual block each (16, 64, 96, 128 channels; three downsamplings): small enough
# for the benchmarks' tens of thousands of calls on a CPU thread (its cost per call, and
# what wider stages or other patches cost, are in samplers/PERFORMANCE.md); patches of 4
# would predict each 4x4 block through one 1x1 conv.
ARCHITECTURE: dict[str, Any] = {
    "c_in": 3,
    "feats_in": 64,
    "depths": [1, 1, 1, 1],
    "channels": [16, 64, 96, 128],
    "self_attn_depths": [False, False, False, False],
    "patch_size": 2,
}


class CompVisVDenoiser(K.external.CompVisVDenoiser):
    """k-diffusion's ``CompVisVDenoiser``, whose ``get_v(x, t, cond)`` requires a ``cond``
    keyword at every call, with ``cond`` optional (None): it runs with no ``extra_args``,
    as the built-in model's ``CompVisDenoiser`` does."""

    def get_v(self, x: Tensor, t: Tensor, cond: Any = None, **kwargs: Any) -> Tensor:
        return self.inner_model.apply_model(x, t, cond)


class LearnedNet(nn.Module):
    """The network behind the CompVis model interface: ``alphas_cumprod`` and
    ``apply_model(x, t, cond=None)``, which takes the VP-scaled input ``x`` (N, 3, H, W)
    at timestep ``t`` (continuous or integer, the schedule's) and returns the eps (or v)
    prediction. ``cond`` and other keywords are accepted and ignored: it takes no
    conditioning.

    Inside, ``denoiser`` is k-diffusion's Karras et al. preconditioner
    (``layers.Denoiser``, ``sigma_data`` 0.5, about the pixels' standard deviation) around
    the U-Net: E[x0 | x] = c_skip x + c_out F(c_in x, sigma), which tends to the noise
    prediction at low sigma and to the x0 prediction at high sigma; ``apply_model`` turns
    its x0 into eps (or v), which the CompVis wrapper turns back. The noise level is
    interpolated from ``t`` in log sigma exactly as k-diffusion's ``t_to_sigma`` does.
    """

    def __init__(self, prediction: str = "eps", architecture: Optional[dict[str, Any]] = None, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}, got {prediction!r}")
        self.prediction = prediction
        self.architecture = dict(ARCHITECTURE if architecture is None else architecture)
        self.sigma_data = float(sigma_data)
        self.denoiser = K.layers.Denoiser(ImageDenoiserModelV1(**self.architecture), sigma_data=self.sigma_data)
        # Sizes must be a multiple of the patch size times one 2 per downsampling.
        self.multiple = self.architecture["patch_size"] * 2 ** (len(self.architecture["depths"]) - 1)
        alphas = pixel_alphas_cumprod()
        self.alphas_cumprod: Tensor
        self.log_sigmas: Tensor
        self.register_buffer("alphas_cumprod", alphas, persistent=False)
        self.register_buffer("log_sigmas", (((1 - alphas) / alphas) ** 0.5).log(), persistent=False)

    @property
    def net(self) -> nn.Module:
        """The U-Net (k-diffusion's ``ImageDenoiserModelV1``): what the weights file holds."""
        return self.denoiser.inner_model

    def sigma_of_t(self, t: Tensor) -> Tensor:
        """The noise level at timestep ``t``: log sigma interpolated between timesteps."""
        t = t.float().clamp(0, len(self.log_sigmas) - 1)
        low, high, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def x0(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x] for x = x0 + sigma * eps (N, 3, H, W) of any size, sigma (N,)."""
        dtype = next(self.net.parameters()).dtype
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        inputs = x.to(dtype)
        if pad_h or pad_w:
            # Mirror the edge (replicate where the image is too small to mirror).
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            inputs = F.pad(inputs, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), mode=mode)
        out = self.denoiser(inputs, sigma.to(dtype))
        return out[..., pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width]

    def apply_model(self, x: Tensor, t: Union[Tensor, float], cond: Any = None, **kwargs: Any) -> Tensor:
        """The eps (or v) prediction for ``x`` (N, 3, H, W) at timestep ``t`` (N,) or scalar."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be RGB pixels (N, 3, H, W), got {tuple(x.shape)}")
        sigma = self.sigma_of_t(torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0]))
        s = sigma.to(x.dtype).reshape(-1, 1, 1, 1)
        noisy = x * (s**2 + 1).sqrt()  # the VP-scaled input back at x0 + sigma * eps
        x0 = self.x0(noisy, sigma).to(x.dtype)
        eps = (noisy - x0) / s
        if self.prediction == "eps":
            return eps
        # v = sqrt(alpha) eps - sqrt(1 - alpha) x0, with alpha = 1 / (sigma^2 + 1).
        return (eps - s * x0) / (s**2 + 1).sqrt()


def wrap(model: LearnedNet) -> nn.Module:
    """``model`` as a k-diffusion denoiser: ``CompVisDenoiser`` (eps) or
    :class:`CompVisVDenoiser` (v; k-diffusion's, with ``cond`` optional)."""
    return K.external.CompVisDenoiser(model) if model.prediction == "eps" else CompVisVDenoiser(model)


def new_denoiser(prediction: str = "eps", seed: int = 0, architecture: Optional[dict[str, Any]] = None) -> nn.Module:
    """A freshly initialised (untrained) denoiser, for training: torch's RNG seeded with ``seed``."""
    torch.manual_seed(seed)
    return wrap(LearnedNet(prediction, architecture))


def save_weights(denoiser: nn.Module, path: Union[str, Path]) -> None:
    """Write ``denoiser``'s network (float16) with its prediction and architecture to
    ``path``, atomically (a temporary file in the same folder, then renamed)."""
    model = denoiser.inner_model
    assert isinstance(model, LearnedNet), "a denoiser made by new_denoiser or learned_denoiser"
    record = {
        "format": FORMAT,
        "architecture": model.architecture,
        "sigma_data": model.sigma_data,
        "state_dict": {name: value.detach().to("cpu", torch.float16) for name, value in model.net.state_dict().items()},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(record, file)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's file is private (0600)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def learned_denoiser(device: Union[str, torch.device] = "cpu", path: Union[str, Path, None] = None, prediction: str = "eps") -> nn.Module:
    """The trained denoiser as a k-diffusion denoiser, in float32 on ``device``, in eval
    mode with gradients off: ``CompVisDenoiser``, as the built-in model, or with
    ``prediction="v"`` :class:`CompVisVDenoiser` (the same denoiser to float rounding).
    ``path``: another weights file written by :func:`save_weights` (default: the package's)."""
    record = torch.load(WEIGHTS if path is None else path, map_location="cpu", weights_only=True)
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ValueError(f"{path or WEIGHTS}: not a {FORMAT} weights file")
    model = LearnedNet(prediction, record["architecture"], record["sigma_data"])
    model.net.load_state_dict({name: value.float() for name, value in record["state_dict"].items()})
    denoiser = wrap(model).to(device).eval()
    return denoiser.requires_grad_(False)
