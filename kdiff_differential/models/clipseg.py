"""Text-driven change maps (``--map-prompt TEXT --segmenter SOURCE``): "change the sky"
without painting a mask.

CLIPSeg (through transformers' ``CLIPSegForImageSegmentation`` and ``CLIPSegProcessor``)
scores every pixel for how well it matches the text; the sigmoid of its logits, scaled
to the image's size, is a soft map in [0, 1] (1 = change), which is what Differential
Diffusion takes. The command line multiplies it with ``--map`` (default ``full`` when a
prompt is given), then shapes the product with ``--grow``, ``--feather`` and ``--blur``.

``SOURCE`` is a local folder saved by ``save_pretrained`` (model and processor), or a Hub
id already in the local Hugging Face cache: nothing is downloaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional, Union

from ..errors import InputError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import Tensor

# Run in the repository's folder: the package is installed from a clone, not the package index.
INSTALL = "pip install -e '.[diffusers]'"


def load_segmenter(source: str, device: Union[str, "torch.device"] = "cpu", quiet: bool = False) -> tuple[Any, Any]:
    """CLIPSeg's model (in eval mode, on ``device``) and processor from ``source``; an
    InputError that says why when transformers is missing or the source cannot be read.
    ``quiet`` turns transformers' loading bars and logged advice off, for good: a
    setting for programs (the command line), not for libraries."""
    try:
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor
        from transformers.utils import logging as transformers_logging
    except ImportError as error:
        raise InputError(f"segmenter= needs transformers ({error}); install it: {INSTALL}") from None
    if quiet:
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
    from .sources import cached_folder, resolve_source

    # As --model names them: a folder that is not there, or a Hub id not in the cache.
    resolved = resolve_source(source, flag="segmenter")
    if resolved.kind == "file":
        raise InputError(f"segmenter={source}: a single file; give a CLIPSeg folder saved by save_pretrained, or a Hub id")
    folder = resolved.local if resolved.kind == "folder" else cached_folder(resolved)
    try:
        processor = CLIPSegProcessor.from_pretrained(folder, local_files_only=True)
        model: Any = CLIPSegForImageSegmentation.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"segmenter={source}: not a CLIPSeg model and processor saved by save_pretrained ({first})") from None
    return model.to(device).eval(), processor


def prompt_map(
    image: "np.ndarray",
    prompt: str,
    segmenter: Union[str, tuple[Any, Any]],
    *,
    device: Union[str, "torch.device"] = "cpu",
    change_map: Any = None,
    quiet: bool = False,
) -> "Tensor":
    """How much each pixel of ``image`` (uint8 (H, W, 3)) matches ``prompt``, as change
    strengths float32 (H, W) in [0, 1], 1 = change: CLIPSeg's sigmoid, resized
    bilinearly; times ``change_map`` ((h, w) in [0, 1], stretched to (H, W)) when given.
    ``segmenter`` is a source for :func:`load_segmenter` (``quiet`` as there) or its
    (model, processor) pair."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from ..pixels import require_rgb
    from ..maps.reading import strength_array

    require_rgb(image, "image")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"prompt must be a non-empty text, got {prompt!r}")
    model, processor = load_segmenter(segmenter, device, quiet) if isinstance(segmenter, str) else segmenter
    # A writable copy: torch warns about read-only arrays (such as np.asarray of a PIL image).
    inputs = processor(text=[prompt], images=[np.array(image)], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**{name: value.to(device) for name, value in inputs.items()}).logits
    scores = torch.sigmoid(logits.float().reshape(1, 1, *logits.shape[-2:]))
    height, width = image.shape[:2]
    text = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).cpu()
    if change_map is None:
        return text
    return text * torch.from_numpy(strength_array(change_map, (height, width))).float()
