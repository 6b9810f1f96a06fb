"""The quick-start notebook runs top to bottom, its edits do what its text says, and it is
committed with its outputs (so GitHub shows its pictures), small."""

import copy
from pathlib import Path

import nbformat
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
# Appended to the notebook in the test's run: what its cells show, checked in its kernel.
CHECKS = """
assert set(release for release, _, _ in table) == {"faithful", "smooth", "binary"}
# The demo: the gradient's kept column is the input's, its changed column is not.
assert np.array_equal(done_demo.image[:, 0], image[:, 0]) and np.abs(done_demo.image[:, -4:].astype(int) - image[:, -4:]).mean() > 20
# The composite on the larger input: the kept column exact, though the model ran below its resolution.
assert np.array_equal(large_done.image[:, 0], large[:, 0]) and not np.array_equal(large_done.decoded[:, 0], large[:, 0])
# The whole edit: the disk, feathered by 12 px, is all that changes, and the model ran on its box.
distance = np.hypot(*np.mgrid[:height, :width] - np.array([65, 112])[:, None, None])
assert np.array_equal(done.image[distance > 28 + 12 + 1], image[distance > 28 + 12 + 1])
assert np.abs(done.image[distance < 20].astype(int) - image[distance < 20]).mean() > 20
assert done.region.cropped and done.run.result.shape[-1] < width
assert len(masks) == len(run.step_sigmas) == 20
# Video: every frame keeps its kept pixels, the disc changes; the random Wan pads 10 frames to 13 and gives 10 back.
assert all(np.array_equal(out[m == 0], f[m == 0]) for out, m, f in zip(clip_done.frames, moving, clip))
assert np.abs(clip_done.frames[moving == 1].astype(int) - clip[moving == 1]).mean() > 20
assert wan_done.padded == 3 and wan_done.frames.shape == small.shape and wan_done.run.result.shape[2] == 4
assert all(np.array_equal(o[m == 0], f[m == 0]) for o, m, f in zip(wan_done.frames, box, small))
"""


def images(notebook) -> dict[int, int]:
    """How many pictures each code cell shows, by cell index."""
    return {index: sum(1 for output in cell.get("outputs", []) if {"image/png", "image/jpeg"} & set(output.get("data", {})))
            for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"}


def test_the_notebook_is_committed_with_its_outputs_small():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    # Run once, top to bottom, every cell: execution counts 1, 2, ..., N.
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1)), "run python notebooks/store_outputs.py"
    assert not [output for cell in code for output in cell.outputs if output.output_type == "error"]
    assert sum(images(notebook).values()) >= 8  # every figure cell but the optional real model's
    assert NOTEBOOK.stat().st_size < 2_000_000
    assert "colab-badge" in notebook.cells[0].source
    assert "USE_REAL_MODEL = False" in notebook.cells[-1].source


def test_the_notebook_runs_top_to_bottom_and_its_edits_do_what_it_says(tmp_path):
    from nbclient import NotebookClient

    stored = nbformat.read(NOTEBOOK, as_version=4)
    notebook = copy.deepcopy(stored)
    # The demo cell's result under its own name, before the last cells reuse "done".
    demo = next(cell for cell in notebook.cells if cell.cell_type == "code" and "run = done.run" in cell.source)
    demo.source += "\ndone_demo = done"
    notebook.cells.append(nbformat.v4.new_code_cell(CHECKS))
    # The kernel is this test environment's Python (ipykernel's own "python3" spec).
    client = NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    errors = [f"{output.ename}: {output.evalue}" for cell in notebook.cells for output in cell.get("outputs", []) if output.output_type == "error"]
    assert not errors, errors
    # The stored outputs are the notebook's as it stands: the same cells show pictures.
    fresh = images(notebook)
    fresh.pop(len(notebook.cells) - 1)
    assert fresh == images(stored), "run python notebooks/store_outputs.py"


def test_the_real_model_cell_names_every_family():
    from kdiff_differential.models.families import FAMILIES

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    text = " ".join(notebook.cells[-2].source.split())
    assert [family.name for family in FAMILIES if family.name not in text] == []


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

    from kdiff_differential import EditSettings, edit_image, open_model
    from kdiff_differential.editing.figures import strip
    from kdiff_differential.maps.presets import preset_map

    source = nbformat.read(NOTEBOOK, as_version=4).cells[-1].source
    source = source.replace("USE_REAL_MODEL = False", "USE_REAL_MODEL = True")
    source = source.replace('MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"', f"MODEL = {model!r}")
    source = source.replace("steps=25", f"steps={steps}")
    image = np.random.default_rng(0).integers(0, 256, (24, 28, 3), dtype=np.uint8)
    shown = []
    namespace = {
        "torch": torch, "image": image, "gradient": preset_map("gradient-x", 24, 28),
        "EditSettings": EditSettings, "edit_image": edit_image, "open_model": open_model, "strip": strip,
        "show": lambda picture, title=None, size=8: shown.append((picture, title)),
    }
    exec(compile(source, "quickstart.ipynb:last cell", "exec"), namespace)
    (picture, title), = shown
    assert "composite" in title and picture.shape[1] > 4 * image.shape[1]  # four panels side by side
    done = namespace["real_done"]
    # The kept column is exact after the composite; the changed side is the model's.
    assert np.array_equal(done.image[:, 0], image[:, 0]) and not np.array_equal(done.image[:, -1], image[:, -1])
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
