"""The README as a newcomer reads it: its first example runs as written, its recipes
import from the package only, and its clone address is the project's."""

import re
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.slow
def test_the_first_python_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(PYTHON_BLOCKS[0])
    runpy.run_path(str(script), run_name="__main__")
    edited = np.asarray(Image.open(tmp_path / "edited.png"))
    from skimage import data

    image = data.astronaut()[::4, ::4]
    assert edited.shape == image.shape
    assert np.array_equal(edited[:, 0], image[:, 0])  # strength 0 at the left edge: kept exactly
    assert np.abs(edited[:, -8:].astype(int) - image[:, -8:]).mean() > 20  # the right edge regenerated


def test_the_recipes_import_from_the_package_only():
    imports = re.findall(r"^\s*from (kdiff_differential[\w.]*) import", "\n".join(PYTHON_BLOCKS), re.M)
    assert imports and set(imports) == {"kdiff_differential"}, imports


def test_the_clone_address_is_the_projects_repository():
    repository = re.search(r'^Repository = "(.+?)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    clones = re.findall(r"git clone (\S+) kdiff-differential", README)
    assert clones == [repository]
