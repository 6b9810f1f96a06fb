"""The built-in model: the exact denoiser of a few photographs that ship with scikit-image.

It is an :class:`IdealDenoiser` (the closed-form posterior mean) over
``TRAINING_IMAGES``, in pixel space, behind k-diffusion's ``CompVisDenoiser``: the same
path a Stable Diffusion model takes. It is real and exact for its tiny data set, which
makes it good for seeing and testing the mechanism with no weights to download; it is
not a generative model of the world: what it regenerates comes from its few images.

The example image (``EXAMPLE_IMAGE``) is not among the training images, so that
regenerated pixels visibly differ from the input.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import InputError
from ..pixels import require_rgb, to_image, to_tensor
from ..core.samplers import DEFAULT_STEPS
from .ideal import IdealDenoiser

# Only images inside the scikit-image wheel: skimage.data fetches the others with pooch.
TRAINING_IMAGES = ("chelsea", "coffee", "rocket", "hubble_deep_field")
EXAMPLE_IMAGE = "astronaut"
EXAMPLE_SIZE = 256
# The model runs at the input's size, scaled down so that its longest side is at most this.
MAX_SIDE = 512
# The noise levels the model knows, in [-1, 1] pixel units. Stable Diffusion's schedule is
# made for latents; on pixels it spends half its timesteps above sigma 1.6, where the
# posterior of a few photographs has long settled on one of them, so that almost every
# released pixel would be replaced outright. Evenly spaced in log sigma, the timestep
# clock instead releases strength s at about SIGMA_MIN * (SIGMA_MAX / SIGMA_MIN) ** s.
SIGMA_MIN, SIGMA_MAX = 0.01, 10.0
# The width of the Gaussian around each training image. A pixel released at sigma keeps
# about SPREAD / sqrt(SPREAD^2 + sigma^2) of its input, so change grows smoothly with the
# map value; the price is grain of this size in regenerated pixels (independent in each
# channel, the data a sampler draws from, so more steps keep it). docs/models.md, "Grain
# in the built-in model's output", says why 0.1 and what other widths do.
SPREAD = 0.1


def pixel_alphas_cumprod(steps: int = 1000) -> Tensor:
    """The built-in model's training schedule: sigma log-spaced from SIGMA_MIN to
    SIGMA_MAX over ``steps`` timesteps, as cumulative alphas 1 / (1 + sigma^2), (steps,) float32."""
    log_sigmas = torch.linspace(math.log(SIGMA_MIN), math.log(SIGMA_MAX), steps, dtype=torch.float64)
    return (1 / (1 + (2 * log_sigmas).exp())).float()


def photograph(name: str) -> np.ndarray:
    import skimage.data

    return getattr(skimage.data, name)()


def fit_pixels(image: np.ndarray, height: int, width: int) -> Tensor:
    """uint8 (H, W, 3), centre-cropped to the aspect height : width and resized:
    float32 (1, 3, height, width) in [-1, 1]."""
    rows, columns = image.shape[:2]
    if rows * width > columns * height:
        keep = round(columns * height / width)
        image = image[(rows - keep) // 2 : (rows - keep) // 2 + keep]
    else:
        keep = round(rows * width / height)
        image = image[:, (columns - keep) // 2 : (columns - keep) // 2 + keep]
    pixels = to_tensor(image)
    return F.interpolate(pixels, size=(height, width), mode="bilinear", align_corners=False, antialias=True).clamp(-1, 1)


def load_example_image() -> np.ndarray:
    """The demo's input: scikit-image's astronaut at EXAMPLE_SIZE square, uint8 (H, W, 3)."""
    return to_image(fit_pixels(photograph(EXAMPLE_IMAGE), EXAMPLE_SIZE, EXAMPLE_SIZE))


def load_example_clip(frames: int = 9, shift: int = 8) -> np.ndarray:
    """The video demo's input: the example image panned ``shift`` pixels a frame,
    uint8 (frames, EXAMPLE_SIZE, EXAMPLE_SIZE, 3)."""
    wide = to_image(fit_pixels(photograph(EXAMPLE_IMAGE), EXAMPLE_SIZE, EXAMPLE_SIZE + shift * (frames - 1)))
    return np.stack([wide[:, shift * i : shift * i + EXAMPLE_SIZE] for i in range(frames)])


def working_size(height: int, width: int) -> tuple[int, int]:
    """The size the model runs at for an input of height x width: the same, or scaled
    down to a longest side of MAX_SIDE."""
    scale = min(1.0, MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def builtin_denoiser(height: int, width: int, spread: float = SPREAD, prediction: str = "eps", frames: Optional[int] = None) -> nn.Module:
    """The built-in model at height x width, as a k-diffusion denoiser
    (``CompVisDenoiser``, or ``CompVisVDenoiser`` for ``prediction="v"``). With
    ``frames``, a model of still clips of that many frames (1, 3, frames, height, width):
    each training image held in every frame, so that what it regenerates stays the same
    from frame to frame."""
    import k_diffusion as K

    images = torch.cat([fit_pixels(photograph(name), height, width) for name in TRAINING_IMAGES])
    if frames is not None:
        images = images.unsqueeze(2).expand(-1, -1, frames, -1, -1)
    model = IdealDenoiser(images, alphas_cumprod=pixel_alphas_cumprod(), prediction=prediction, spread=spread)
    wrap = K.external.CompVisDenoiser if prediction == "eps" else K.external.CompVisVDenoiser
    return wrap(model)


class Builtin:
    """The built-in model, loaded: nothing to load until :meth:`fit` builds the exact
    denoiser at an image's working size. It takes no text, guidance or ControlNets and
    runs at any size (``native_side`` None); it edits video clips too, frame for frame
    (``frames_per_latent`` 1)."""

    schedule = "karras"
    steps = DEFAULT_STEPS
    cfg: Optional[float] = None
    description = ""  # chosen by name, nothing detected
    native_side: Optional[int] = None
    flow = False
    frames_per_latent: Optional[int] = 1
    builtin = True

    def __init__(self, device: Union[str, torch.device] = "cpu") -> None:
        self.device = torch.device(device)

    def fit(self, image: np.ndarray) -> "BuiltinModel":
        """The model fitted to ``image``, uint8 (H, W, 3), or to a clip's frames (T, H, W, 3)."""
        return BuiltinModel(image, self.device)


class BuiltinModel:
    """The built-in model fitted to one input image or clip: pixels in, pixels out.

    ``latent`` is the image itself, (1, 3, h, w) in [-1, 1] at the working size, or the
    clip's frames (1, 3, T, h, w); ``decode`` brings a result back to the input's size
    and shape. When the working size is smaller, the result itself is scaled up: adding
    only the scaled-up change to the input would carry the input's fine edges into
    regenerated areas (ghosts). The original's full-resolution pixels come back where the
    map keeps them, or where the model barely changed them, in the pixel-space composite
    (:mod:`kdiff_differential.stages.compositing`).
    """

    schedule, steps, cfg, description = Builtin.schedule, Builtin.steps, Builtin.cfg, Builtin.description

    def __init__(self, image: np.ndarray, device: torch.device = torch.device("cpu")) -> None:
        frames = _frames(image)
        self.shape = image.shape
        self.original = torch.cat([to_tensor(frame) for frame in frames]).to(device)
        self.size = working_size(*image.shape[-3:-1])
        pixels = self._scale(self.original, self.size)
        # A clip's frames are the latent's frame axis: (1, 3, T, h, w).
        self.latent = pixels if image.ndim == 3 else pixels.movedim(0, 1).unsqueeze(0)
        self.denoiser = builtin_denoiser(*self.size, frames=None if image.ndim == 3 else len(frames)).to(device)

    @staticmethod
    def _scale(pixels: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(pixels.shape[-2:]) == size:
            return pixels
        return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)

    def extra_args(
        self, prompt: str = "", negative: str = "", cfg: Optional[float] = None, change_map: Any = None,
        inpaint_mask: Optional[str] = None, controls: Sequence[Any] = (), sigmas: Optional[Tensor] = None, cfg_2: Optional[float] = None,
    ) -> dict:
        """No conditioning: the model has none. Text and guidance have no effect (the
        caller is told by :func:`~kdiff_differential.edit_image`); an inpainting mask or
        ControlNets, which would be silently lost, are refused."""
        if inpaint_mask is not None:
            raise InputError(f"inpaint_mask={inpaint_mask}: the built-in model has no inpainting channels")
        if controls:
            raise InputError("controls: ControlNets need a diffusers model (model=: a folder, Hub id or .safetensors file); the built-in model takes none")
        return {}

    def decode(self, latent: Tensor) -> np.ndarray:
        """The result latent (1, 3, h, w) as an image of the input's size, uint8 (H, W, 3);
        a clip's (1, 3, T, h, w) as its frames (T, H, W, 3)."""
        pixels = latent.to(self.original.dtype)
        pixels = pixels if pixels.ndim == 4 else pixels[0].movedim(1, 0)
        if tuple(pixels.shape[-2:]) != tuple(self.original.shape[-2:]):
            pixels = F.interpolate(pixels, size=self.original.shape[-2:], mode="bicubic", align_corners=False)
        frames = np.stack([to_image(frame[None].clamp(-1, 1)) for frame in pixels])
        return frames.reshape(self.shape)


def _frames(image: np.ndarray) -> np.ndarray:
    """An image uint8 (H, W, 3) as one frame (1, H, W, 3), or a clip's frames (T, H, W, 3)
    as they are; TypeError for anything else."""
    if isinstance(image, np.ndarray) and image.ndim == 4:
        require_rgb(image[0] if len(image) else image, "image")
        if not len(image):
            raise ValueError("image: a clip of 0 frames; give at least one frame")
        return image
    return require_rgb(image, "image")[None]
