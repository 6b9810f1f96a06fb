"""Atomic file writes: a reader (or an interrupted run) sees the old file or the new one,
never a truncated one; the check that a folder can be written, and that an output is
none of the inputs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Union


def write_atomically(path: Union[str, Path], write: Callable[[IO[Any]], None], binary: bool = False) -> None:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, then rename it over ``path``."""
    target = Path(path)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb" if binary else "w", newline=None if binary else "") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        # mkstemp makes the file private (0600); give it the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, target)
    except BaseException:
        os.unlink(temporary)
        raise


def check_writable(folder: Union[str, Path], what: str) -> None:
    """InputError naming ``what`` (the option that writes there) unless a file can be
    made in ``folder``: one is made and removed, so that a run that could not write its
    result is refused before any work, not after it."""
    from ..errors import InputError

    try:
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".kdiff-differential-", suffix=".probe")
    except OSError as error:
        raise InputError(f"{what}: cannot write in {folder} ({error.strerror or error}); write elsewhere") from None
    os.close(handle)
    os.unlink(probe)


def same_file(output: Union[str, Path], given: Union[str, Path]) -> bool:
    """Whether writing ``output`` would replace the file ``given``: the same path once
    symlinks, ``..`` and spelling are resolved, or the same file on disk (a hard link, a
    case-insensitive file system)."""
    output, given = Path(output), Path(given)
    if output.resolve() == given.resolve():
        return True
    try:
        return os.path.samefile(output, given)
    except OSError:  # one of them does not exist yet
        return False
