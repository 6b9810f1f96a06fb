"""The figures of docs/cli.md for what runs around the model call (python -m samplers.around)."""

from __future__ import annotations

import pytest
from PIL import Image

from samplers.around import GAP, SIDE, main


@pytest.mark.slow
def test_the_grow_and_feather_figure_is_two_rows_of_five_and_small(tmp_path, capsys):
    assert main(["--out", str(tmp_path), "--only", "grow-feather.png"]) == 0
    with Image.open(tmp_path / "grow-feather.png") as figure:
        assert figure.width == 5 * SIDE + 4 * GAP
        assert figure.height > 2 * SIDE
    assert (tmp_path / "grow-feather.png").stat().st_size < 200_000
    assert capsys.readouterr().out == f"wrote {tmp_path / 'grow-feather.png'}\n"


def test_a_missing_folder_is_one_line(tmp_path, capsys):
    assert main(["--out", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
