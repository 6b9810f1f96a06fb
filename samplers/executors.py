"""Executors: where a sweep's runs are done. Each yields ``(run, row, image)`` as runs finish.

``local`` does them one after another in this process; ``ray`` sends them to a Ray
cluster (``ray.init(address=...)``, or a local instance when no address is given).
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional

import numpy as np

from samplers.sweep import Run, Setup, perform

EXECUTORS = ("local", "ray")

Finished = tuple[Run, dict[str, Any], np.ndarray]


def run_local(setup: Setup, runs: list[Run]) -> Iterator[Finished]:
    for run in runs:
        yield (run, *perform(setup, run))


def import_ray() -> Any:
    """Ray, or an ImportError that says which extra brings it."""
    try:
        import ray
    except ImportError:
        raise ImportError("--executor ray needs Ray: pip install -e '.[ray]'") from None
    return ray


def run_ray(setup: Setup, runs: list[Run], address: Optional[str] = None) -> Iterator[Finished]:
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        remote = ray.remote(num_cpus=1)(perform)
        pending = {remote.remote(setup, run): run for run in runs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for reference in done:
                yield (pending.pop(reference), *ray.get(reference))
    finally:
        if started_here:
            ray.shutdown()


def execute(name: str, setup: Setup, runs: list[Run], address: Optional[str] = None) -> Iterator[Finished]:
    """The runs' results from executor ``name``, in the order they finish."""
    if name == "ray":
        return run_ray(setup, runs, address)
    return run_local(setup, runs)
