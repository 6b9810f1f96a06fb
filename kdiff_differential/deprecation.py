"""Old public names kept working: each warns once, the first time it is used."""

from __future__ import annotations

import functools
import warnings
from typing import Any, Callable

_WARNED: set[str] = set()


def renamed(old: str, new: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` under its old name ``old``: the first call anywhere warns (FutureWarning)
    that it is now ``new``, and every call does what ``new`` does."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        if old not in _WARNED:
            _WARNED.add(old)
            warnings.warn(f"{old} is now {new}; the old name will be removed", FutureWarning, stacklevel=2)
        return function(*args, **kwargs)

    return call
