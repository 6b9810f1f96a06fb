"""Executors for a sweep: where its runs are done. Each yields ``(run, row, image)`` as runs finish.

The executors themselves are the package's (:mod:`kdiff_differential.executors`); this
adapts them to a sweep's :func:`~samplers.sweep.perform`.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

from kdiff_differential.executors import EXECUTORS, import_ray
from kdiff_differential.executors import execute as execute_jobs
from samplers.sweep import Run, Setup, perform

Finished = tuple[Run, dict[str, Any], np.ndarray]

__all__ = ["EXECUTORS", "Finished", "execute", "import_ray"]


def execute(name: str, setup: Setup, runs: list[Run], address: Optional[str] = None) -> Iterator[Finished]:
    """The runs' results from executor ``name``, in the order they finish."""
    for run, (row, image) in execute_jobs(name, perform, runs, shared=(setup,), address=address):
        yield run, row, image
