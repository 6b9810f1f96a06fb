"""Opt-in silence for warnings that k-diffusion's dependencies print and a user cannot act on.

``import k_diffusion`` warns ``pkg_resources is deprecated`` (from its clip dependency),
and the SDE samplers' Brownian trees (torchsde) warn ``Should have ta>=t0`` when a
float rounding puts a step a hair outside the tree's interval. Nothing here changes
the global warning filters: only code run inside :func:`quiet_warnings` is quieter.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator

# (message regex, category, module regex) of each warning that is silenced.
NOISE = (
    (r"pkg_resources is deprecated", UserWarning, ""),
    (r"Should have t\w* ?[<>]=t[01] but got", UserWarning, r"torchsde"),
)


@contextmanager
def quiet_warnings() -> Iterator[None]:
    """Inside the ``with`` block, hide k-diffusion's ``pkg_resources is deprecated`` and
    torchsde's ``Should have ta>=t0`` warnings; every other warning shows as before, and
    the filters are restored on leaving. Put ``import k_diffusion`` inside the block, since
    the first import is when that warning is issued. Like ``warnings.catch_warnings``,
    which it uses, it is not thread-safe.
    """
    with warnings.catch_warnings():
        for message, category, module in NOISE:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
        yield
