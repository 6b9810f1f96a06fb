"""Executors: where a batch of independent jobs runs. Each yields ``(item, result)`` as
jobs finish.

``local`` does them one after another in this process; ``ray`` sends them to a Ray
cluster (``ray.init(address=...)``, or a local instance when no address is given), one
CPU each. The command line's folders (``--executor``) and ``samplers.compare`` use them.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from .choices import EXECUTORS


Item = TypeVar("Item")
Result = TypeVar("Result")


def import_ray() -> Any:
    """Ray, or an ImportError that says which extra brings it."""
    try:
        import ray
    except ImportError:
        raise ImportError("executor=ray needs Ray: pip install -e '.[ray]'") from None
    return ray


def run_local(function: Callable[..., Result], items: Iterable[Item], shared: tuple = ()) -> Iterator[tuple[Item, Result]]:
    for item in items:
        yield item, function(*shared, item)


def run_ray(
    function: Callable[..., Result], items: Iterable[Item], shared: tuple = (), address: Optional[str] = None
) -> Iterator[tuple[Item, Result]]:
    """``function`` must be importable by the workers (a module-level function of an
    installed module), as must everything in ``shared`` and ``items``."""
    ray = import_ray()
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    try:
        remote = ray.remote(num_cpus=1)(function)
        pending = {remote.remote(*shared, item): item for item in items}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for reference in done:
                try:
                    result = ray.get(reference)
                except ray.exceptions.RayTaskError as error:
                    # The worker's own exception (a user's InputError is one line), not Ray's wrapping of it.
                    raise (error.cause if isinstance(error.cause, Exception) else error) from None
                yield pending.pop(reference), result
    finally:
        if started_here:
            ray.shutdown()


def execute(
    name: str, function: Callable[..., Result], items: Iterable[Item], shared: tuple = (), address: Optional[str] = None
) -> Iterator[tuple[Item, Result]]:
    """``(item, function(*shared, item))`` for every item, from executor ``name``, in the
    order the jobs finish."""
    if name not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(map(repr, EXECUTORS))}, got {name!r}")
    if name == "ray":
        return run_ray(function, items, shared, address)
    return run_local(function, items, shared)
