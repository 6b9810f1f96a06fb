"""Is PyTorch installed whole? The check the command line makes before its work.

A torch and a torchvision that do not match (pip can leave them so when the CPU step of
the install fails part-way) break ``import k_diffusion`` deep inside torchvision
(``RuntimeError: operator torchvision::nms does not exist``): a 40-line traceback
that names neither the cause nor the cure. :func:`check_torch` imports torch,
torchvision and k-diffusion in turn and says in one line which failed, with the
versions installed and the command that mends it. The test suite's conftest asks
:func:`torch_problem` when a test module fails to import.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Optional

from ..errors import InstallError

# PyTorch's index of CPU builds: the README's first install step.
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# The pair installed again, together: the CPU build (for CUDA, the same without --index-url).
REINSTALL = (f"pip install --force-reinstall torch torchvision --index-url {CPU_INDEX} "
             f"(the CPU build; for CUDA leave out --index-url)")


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def matching_torchvision(torch_version: str) -> Optional[str]:
    """The torchvision release made with torch ``torch_version``: 2.M.P with 0.(M+15).P
    (2.0.P, the first of the rule, with 0.15.(P+1)); None for a version that is not 2.M.P."""
    match = re.match(r"2\.(\d+)\.(\d+)", torch_version)
    if not match:
        return None
    minor, patch = int(match[1]), int(match[2])
    return f"0.{minor + 15}.{patch + (minor == 0)}"


def _said(error: BaseException) -> str:
    """The error in one line: its class and its message's first line."""
    lines = str(error).strip().splitlines()
    return f"{error.__class__.__name__}: {lines[0]}" if lines else error.__class__.__name__


def torch_problem() -> Optional[str]:
    """None when torch, torchvision and k-diffusion import; else one line saying which
    failed (with torch's and torchvision's installed versions) and the command that
    mends it."""
    from ..quiet import quiet_warnings

    step = "torch"
    try:
        # k-diffusion's own import warnings (pkg_resources) are not the user's concern.
        with quiet_warnings():
            import torch  # noqa: F401

            step = "torchvision"
            import torchvision  # noqa: F401

            step = "k_diffusion"
            import k_diffusion  # noqa: F401
    # ImportError (missing), OSError (a missing shared library), RuntimeError (torchvision's
    # operators not in this torch): any failure to import is a broken install.
    except Exception as error:
        versions = f"torch {_version('torch')}, torchvision {_version('torchvision')}"
        if step == "torch":
            return (f"PyTorch cannot be imported ({_said(error)}; {versions}); install it: pip install torch "
                    f"torchvision --index-url {CPU_INDEX} (the CPU build; for CUDA leave out --index-url)")
        if step == "torchvision":
            torch_version, torchvision_version = _version("torch"), _version("torchvision")
            keep = ""
            wanted = matching_torchvision(torch_version)
            if wanted and not torchvision_version.startswith(wanted):
                keep = f"; or keep torch {torch_version.split('+')[0]}: pip install torchvision=={wanted} --index-url {CPU_INDEX}"
            return (f"torchvision does not work with this torch ({_said(error)}; {versions}): install a matching "
                    f"pair: {REINSTALL}{keep}")
        return (f"k-diffusion cannot be imported ({_said(error)}; {versions}); install the package's dependencies "
                f"again, in the repository's folder: pip install -e .")
    return None


def check_torch() -> None:
    """Nothing when torch, torchvision and k-diffusion import; else an
    :class:`~kdiff_differential.errors.InstallError` in one line (:func:`torch_problem`)."""
    problem = torch_problem()
    if problem is not None:
        raise InstallError(problem)
