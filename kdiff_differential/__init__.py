"""Differential Diffusion for every k-diffusion sampler.

A change map gives each pixel a strength in [0, 1]: 1 = change (regenerate fully), 0 =
keep. :func:`edit_image` and :func:`edit_video` run the whole edit of an image (uint8
(H, W, 3)) or a clip (uint8 (T, H, W, 3)) in one call, with :class:`EditSettings`;
:class:`Editor` keeps a model and its settings for many edits. Below them,
:func:`differential_edit` runs one sampler on a latent, and :class:`DifferentialDenoiser`
wraps any k-diffusion denoiser for any sampler.

Every name is loaded on first use (the list is ``__init__.pyi``, read by lazy_loader and
by type checkers), so ``import kdiff_differential`` imports neither torch nor k-diffusion,
and changes no warning filter; ``with quiet_warnings():`` hides the noise of k-diffusion's
dependencies where you ask for it.
"""

import lazy_loader

__version__ = "0.1.0"

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
