"""The quick-start notebook runs top to bottom, and is committed without outputs."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_the_notebook_is_committed_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert "colab-badge" in notebook.cells[0].source
    assert "USE_STABLE_DIFFUSION = False" in notebook.cells[-1].source


def test_the_notebook_runs_top_to_bottom(tmp_path):
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # The kernel is this test environment's Python (ipykernel's own "python3" spec).
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors
    images = [output for cell in notebook.cells for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert len(images) >= 4  # the demo strip, the strength row, the masks, the comparison grid


def _set_repository():
    import importlib.util

    spec = importlib.util.spec_from_file_location("set_repository", NOTEBOOK.parent / "set_repository.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_badge_and_install_cell_point_at_the_address_in_pyproject():
    import subprocess
    import sys

    check = subprocess.run([sys.executable, str(NOTEBOOK.parent / "set_repository.py"), "--check"], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    script = _set_repository()
    address = script.repository()
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    owner_name = address.removeprefix("https://github.com/")
    assert f"colab.research.google.com/github/{owner_name}/blob/main/notebooks/quickstart.ipynb" in notebook.cells[0].source
    assert f'REPO = "{address}"' in notebook.cells[1].source


def test_setting_another_address_rewrites_exactly_the_badge_and_the_install_cell():
    script = _set_repository()
    text = NOTEBOOK.read_text()
    moved = script.pointed(text, "https://github.com/someone/a-fork")
    changed = [(old, new) for old, new in zip(text.splitlines(), moved.splitlines()) if old != new]
    assert len(changed) == 2
    assert "colab.research.google.com/github/someone/a-fork/blob/main/" in changed[0][1]
    assert 'REPO = \\"https://github.com/someone/a-fork\\"' in changed[1][1]
    assert script.pointed(moved, script.repository()) == text
