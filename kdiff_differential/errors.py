"""Bad input from the user, and how a command reports it: one line, no traceback."""

from __future__ import annotations

import argparse
import sys
from typing import Callable


class InputError(ValueError):
    """Bad input from the user (a file, a flag, a model directory): the message says
    what is wrong and what to do, in one line."""


class InstallError(InputError):
    """A broken install (PyTorch, torchvision, k-diffusion that do not import): the message
    says what is wrong and the command that mends it, in one line. It is reported as it
    is: putting it in a command's words could import the very package that is broken."""


class LossyWarning(UserWarning):
    """A file that cannot hold pixels exactly: an output written in a lossy format (JPEG, a
    lossy video codec; its pixels, kept ones included, are not the image's bytes), or a map
    read from one (its values carry compression ripples). The message names the lossless
    formats. It lives here, with no heavy import, so that the image and video modules share it."""


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
