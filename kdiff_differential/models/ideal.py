"""A closed-form ("ideal") denoiser: the exact posterior mean of a small image set.

It is a real denoiser, exact for its data: x0 is one of K images, picked uniformly
and widened by Gaussian noise of standard deviation ``spread``, then
x = x0 + sigma * eps. With ``spread`` 0 the data are the K images alone; a small
``spread`` makes it behave as trained models do near their data (a lightly noised
image denoises to itself), so a pixel released late changes little. It is not a
generative model of the world: whatever it regenerates is one of its K images (plus
``spread``-sized grain). It is good for seeing and testing the mechanism, with no
weights to download.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn

PREDICTIONS = ("eps", "v")


def sd_alphas_cumprod(steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> Tensor:
    """Stable Diffusion's "scaled linear" training schedule: cumulative alphas, (steps,) float32."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, dim=0).float()


class IdealDenoiser(nn.Module):
    """The posterior-mean denoiser of ``images``, behind the CompVis model interface.

    ``images`` is (K, C, H, W), values around [-1, 1], or clips (K, C, T, H, W), which the
    whole clip's posterior weighs together. Like a CompVis ``LatentDiffusion``
    it has ``alphas_cumprod`` and ``apply_model(x, t, cond)``, which takes the VP-scaled
    input at timestep ``t`` (continuous or integer) and returns the noise (``"eps"``)
    or velocity (``"v"``) prediction, so that ``k_diffusion.external.CompVisDenoiser``
    (or ``CompVisVDenoiser``) turns it into E[x0 | x]. ``cond`` is accepted and ignored.
    The mean is computed in float64 with a log-sum-exp softmax, stable at any sigma.
    ``spread`` is the standard deviation of the Gaussian around each image.
    """

    alphas_cumprod: Tensor
    log_sigmas: Tensor
    images: Tensor
    images_sq: Tensor

    def __init__(
        self,
        images: Tensor,
        alphas_cumprod: Optional[Tensor] = None,
        prediction: str = "eps",
        spread: float = 0.1,
    ) -> None:
        super().__init__()
        if not isinstance(images, Tensor) or images.ndim not in (4, 5) or not images.is_floating_point():
            got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"images must be a float tensor (K, C, H, W), or of clips (K, C, T, H, W), got {got}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(map(repr, PREDICTIONS))}, got {prediction!r}")
        if not spread >= 0:
            raise ValueError(f"spread must be >= 0, got {spread}")
        alphas = sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.float()
        self.prediction = prediction
        self.spread = float(spread)
        self.image_shape = tuple(images.shape[1:])
        self.register_buffer("alphas_cumprod", alphas)
        self.register_buffer("log_sigmas", (((1 - alphas.double()) / alphas.double()) ** 0.5).log())
        flat = images.double().flatten(1)
        self.register_buffer("images", flat)
        self.register_buffer("images_sq", (flat**2).sum(1))

    def sigma_of_t(self, t: Tensor) -> Tensor:
        """The noise level at timestep t, interpolated in log sigma as k-diffusion does; float64."""
        t = t.double().clamp(0, len(self.log_sigmas) - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def posterior_mean(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E[x0 | x] for x = x0 + sigma * eps: x (N, *image_shape), sigma (N,); float64."""
        flat = x.double().flatten(1)
        # Around image k, x is Gaussian with variance spread^2 + sigma^2 per pixel.
        variance = self.spread**2 + sigma.double()[:, None] ** 2
        sq_dist = (flat**2).sum(1, keepdim=True) - 2 * flat @ self.images.T + self.images_sq
        centre = torch.softmax(-sq_dist.clamp(min=0) / (2 * variance), dim=1) @ self.images
        # Given image k, the mean moves from it toward x by spread^2 / variance.
        mean = centre + (self.spread**2 / variance) * (flat - centre)
        return mean.reshape(x.shape)

    def apply_model(self, x: Tensor, t: Tensor, cond: Any = None, **kwargs: Any) -> Tensor:
        """The eps or v prediction for the VP-scaled input ``x`` (N, *image_shape) at timestep ``t`` (N,)."""
        sigma = self.sigma_of_t(torch.as_tensor(t, device=x.device).expand(x.shape[0]))
        sigma_per_pixel = sigma.reshape(-1, *[1] * (x.ndim - 1))
        scale = (sigma_per_pixel**2 + 1) ** 0.5
        x_ve = x.double() * scale
        x0 = self.posterior_mean(x_ve, sigma)
        eps = (x_ve - x0) / sigma_per_pixel
        if self.prediction == "eps":
            return eps.to(x.dtype)
        # v = sqrt(alpha) eps - sqrt(1 - alpha) x0, with alpha = 1 / (sigma^2 + 1).
        v = (eps - sigma_per_pixel * x0) / scale
        return v.to(x.dtype)
