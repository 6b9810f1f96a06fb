"""Run the quick-start notebook top to bottom and store its outputs, so that GitHub shows
its pictures: ``python notebooks/store_outputs.py`` after changing a cell or what a cell
shows. Progress bars and library warnings (stderr) are not stored."""

from __future__ import annotations

import nbformat
from nbclient import NotebookClient

from set_repository import NOTEBOOK


def main() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = [output for output in cell.outputs if not (output.output_type == "stream" and output.name == "stderr")]
    nbformat.write(notebook, NOTEBOOK)
    print(f"{NOTEBOOK.name}: run and stored with its outputs, {NOTEBOOK.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
