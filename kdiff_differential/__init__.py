"""Differential Diffusion for every k-diffusion sampler.

Wrap a k-diffusion denoiser in :class:`DifferentialDenoiser` with the original latent
and a change map (per-pixel strength in [0, 1], 1 = change, 0 = keep), and hand the
wrapper to any sampler; :func:`composite` puts the original back in pixel space after
decoding. Importing this package does not import k-diffusion, and changes no warning
filter; ``with quiet_warnings():`` hides the noise of k-diffusion's dependencies where
you ask for it.
"""

from .clocks import CLOCKS
from .compositing import composite
from .denoiser import DifferentialDenoiser
from .maps import prepare_change_map
from .models import load_pipeline
from .quiet import quiet_warnings

__all__ = ["CLOCKS", "DifferentialDenoiser", "composite", "load_pipeline", "prepare_change_map", "quiet_warnings"]
__version__ = "0.1.0"
