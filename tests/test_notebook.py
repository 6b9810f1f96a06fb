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
    assert "USE_REAL_MODEL = False" in notebook.cells[-1].source


def test_the_notebook_runs_top_to_bottom(tmp_path):
    from nbclient import NotebookClient

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # A last cell, added here: how much the first edit changed the image's left and right
    # tenths, where the gradient map says keep (0) and change (1).
    notebook.cells.append(nbformat.v4.new_code_cell(
        "import numpy as np\n"
        "_change = np.abs(result.astype(int) - image.astype(int)).mean(axis=(0, 2))\n"
        "print('KEEP-CHANGE', _change[: width // 10].mean(), _change[-(width // 10):].mean())"
    ))
    # The kernel is this test environment's Python (ipykernel's own "python3" spec).
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    errors = [output for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors
    images = [output for cell in notebook.cells[:-1] for output in cell.get("outputs", []) if "image/png" in output.get("data", {})]
    assert len(images) >= 4  # the demo strip, the strength row, the masks, the comparison grid
    keep, change = map(float, notebook.cells[-1].outputs[0]["text"].split()[1:])
    assert keep < 3 and change > 10, (keep, change)


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


def run_real_model_cell(model: str, steps: int = 2):
    """The last cell, switched on, with ``model`` as MODEL, on a random 24x28 image and
    the gradient map: what it showed (one picture and its title) and its namespace."""
    import numpy as np
    import torch

    from kdiff_differential import composite
    from kdiff_differential.edit import differential_edit
    from kdiff_differential.figures import strip
    from kdiff_differential.models import load_model
    from kdiff_differential.presets import preset_map

    source = nbformat.read(NOTEBOOK, as_version=4).cells[-1].source
    source = source.replace("USE_REAL_MODEL = False", "USE_REAL_MODEL = True")
    source = source.replace('MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"', f"MODEL = {model!r}")
    source = source.replace("steps=25", f"steps={steps}")
    image = np.random.default_rng(0).integers(0, 256, (24, 28, 3), dtype=np.uint8)
    shown = []
    namespace = {
        "Path": Path, "torch": torch, "image": image, "gradient": preset_map("gradient-x", 24, 28),
        "load_model": load_model, "differential_edit": differential_edit, "strip": strip, "composite": composite,
        "show": lambda picture, title=None, size=8: shown.append((picture, title)),
    }
    exec(compile(source, "quickstart.ipynb:last cell", "exec"), namespace)
    (picture, title), = shown
    assert "composite" in title and picture.shape[1] > 4 * image.shape[1]  # four panels side by side
    # The kept column is exact after the composite.
    assert np.array_equal(composite(image, namespace["real_decoded"], namespace["gradient"])[:, 0], image[:, 0])
    return title, namespace


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_the_real_model_cell_runs_a_flow_folder_and_shows_the_composite(family, tmp_path):
    """SD3 or Flux folders run on the family's own schedule."""
    from conftest import save_tiny_flow

    title, namespace = run_real_model_cell(str(save_tiny_flow(tmp_path, family)))
    assert title.startswith({"sd3": "Stable Diffusion 3/3.5", "flux": "Flux.1"}[family])
    assert namespace["real"].schedule == "model"


def test_the_real_model_cell_takes_a_hub_id_from_the_cache(tmp_path, offline_cache):
    """The cell's MODEL as a Hub id, offline, from a tiny pipeline cached as a download."""
    from conftest import cache_as_download, save_tiny_sd

    cache_as_download(save_tiny_sd(tmp_path, "epsilon"), offline_cache, "tiny-org/tiny-sd")
    title, _ = run_real_model_cell("tiny-org/tiny-sd")
    assert title.startswith("Stable Diffusion 1.x/2.x, text-to-image")


def test_the_real_model_cell_runs_an_inpainting_checkpoint(tmp_path):
    """An inpainting UNet needs the image and the change map in extra_args: the cell passes them."""
    from conftest import save_tiny_sd_inpainting

    title, _ = run_real_model_cell(str(save_tiny_sd_inpainting(tmp_path)))
    assert title.startswith("Stable Diffusion 1.x/2.x, inpainting")
