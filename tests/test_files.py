"""write_atomically: a reader, or a run that fails while writing, sees the old file or
the new one, never a partial one, and no temporary file is left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kdiff_differential.files.atomic import write_atomically


def test_a_write_replaces_the_file_whole_with_a_plain_files_mode(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    path.write_text("old")
    write_atomically(path, lambda handle: handle.write("new"))
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary_one(tmp_path: Path, error: BaseException) -> None:
    path = tmp_path / "out.bin"
    path.write_bytes(b"old contents")
    seen = {}

    def half_then_fail(handle) -> None:
        handle.write(b"partial")
        handle.flush()
        # While writing, the old file is still there, whole: the bytes go elsewhere.
        seen["during"] = path.read_bytes()
        raise error

    with pytest.raises(type(error)):
        write_atomically(path, half_then_fail, binary=True)
    assert seen["during"] == b"old contents"
    assert path.read_bytes() == b"old contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    def fail(handle) -> None:
        handle.write("partial")
        raise ValueError("cannot encode")

    with pytest.raises(ValueError):
        write_atomically(tmp_path / "new.txt", fail)
    assert list(tmp_path.iterdir()) == []
