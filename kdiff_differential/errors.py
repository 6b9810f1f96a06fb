"""Bad input from the user and what the user should hear: how a command reports an error
(one line, no traceback), the warning of an edit that still runs, and the small checks
every entry point makes of a setting's value."""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from typing import Any, Callable, Sequence


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a model directory): the message says
    what is wrong and what to do, in one line."""


class InstallError(InputError):
    """A broken install (PyTorch, torchvision, k-diffusion that do not import): the message
    says what is wrong and the command that mends it, in one line. It is reported as it
    is: putting it in a command's words could import the very package that is broken."""


class EditWarning(UserWarning):
    """Something the user should know about an edit that still runs: a setting that has
    no effect, a map stretched to fit, nothing to change, a lossy file."""


class LossyWarning(EditWarning):
    """A file that cannot hold pixels exactly: an output written in a lossy format (JPEG, a
    lossy video codec; its pixels, kept ones included, are not the image's bytes), or a map
    read from one (its values carry compression ripples). The message names the lossless
    formats."""


def warn(message: str) -> None:
    """Say ``message`` as an :class:`EditWarning`, pointing at the caller's caller."""
    warnings.warn(message, EditWarning, stacklevel=3)


def check_number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, whole: bool = False,
                 open_low: bool = False, unit: str = "") -> None:
    """TypeError unless ``value`` is a finite number (an int where ``whole``); InputError
    unless it lies in [low, high] ((low, high] where ``open_low``). Both name ``name``,
    and ``unit`` (" of pixels") when given."""
    kind = ("a whole number" if whole else "a number") + unit
    if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)) or not math.isfinite(value):
        raise TypeError(f"{name}={value!r}: give {kind}")
    if value < low or (open_low and value == low) or value > high:
        bounds = f"in {'(' if open_low else '['}{low:g}, {high:g}]" if high < math.inf else f"{'>' if open_low else '>='} {low:g}"
        raise InputError(f"{name}={value}: out of range; give {kind} {bounds}")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """InputError naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"{name}={value!r}: give one of {', '.join(map(str, choices))}")


def check_switch(name: str, value: Any) -> None:
    """TypeError naming ``name`` unless ``value`` is True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: give True or False")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are InputErrors: parsed inside :func:`command_status`, a bad
    flag is one line and exit status 2, like any other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise InputError(message)


def command_status(prog: str, work: Callable[[], None], interrupted: str, translate: Callable[[str], str] = str) -> int:
    """Run a command's ``work`` and return its exit status: 0, 2 after an InputError (or
    a library's ValueError or TypeError about a setting; reported as one line on stderr,
    in the command's words by ``translate``) or 130 after Ctrl-C (``interrupted`` says
    what is left)."""
    from .quiet import quiet_warnings

    try:
        # k-diffusion's dependencies' warnings (pkg_resources, torchsde) are not the user's concern.
        with quiet_warnings():
            work()
    except InputError as error:
        print(f"{prog}: error: {str(error) if isinstance(error, InstallError) else translate(str(error))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130
    return 0
