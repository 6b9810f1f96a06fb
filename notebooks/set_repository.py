"""Point the notebook's Colab badge and install cell at the repository's address.

The address is set in one place, ``[project.urls] Repository`` in pyproject.toml. After
changing it (a fork, a new home), run ``python notebooks/set_repository.py``;
``--check`` only says whether the notebook agrees (the tests run it).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "quickstart.ipynb"
BADGE = re.compile(r"https://colab\.research\.google\.com/github/[^)\s\"]+/blob/main/notebooks/quickstart\.ipynb")
INSTALL = re.compile(r'REPO = \\"[^\\"]*\\"')


def repository() -> str:
    """The address in pyproject.toml, without a trailing slash or .git."""
    found = re.search(r'^Repository\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    if found is None:
        raise SystemExit("pyproject.toml has no [project.urls] Repository = \"...\"")
    return re.sub(r"(\.git)?/*$", "", found.group(1))


def pointed(notebook: str, address: str) -> str:
    """The notebook's text with the badge and the install cell at ``address``."""
    github = re.fullmatch(r"https://github\.com/([^/]+/[^/]+)", address)
    if github is None:
        raise SystemExit(f"{address}: Colab opens notebooks from https://github.com/OWNER/NAME addresses only")
    badge = f"https://colab.research.google.com/github/{github.group(1)}/blob/main/notebooks/quickstart.ipynb"
    return INSTALL.sub(f'REPO = \\\\"{address}\\\\"', BADGE.sub(badge, notebook))


def main(argv: list[str]) -> int:
    text = NOTEBOOK.read_text()
    wanted = pointed(text, repository())
    if "--check" in argv:
        if wanted != text:
            print(f"{NOTEBOOK.name} does not point at {repository()}: run python notebooks/set_repository.py", file=sys.stderr)
            return 1
        return 0
    if wanted != text:
        NOTEBOOK.write_text(wanted)
    print(f"{NOTEBOOK.name}: badge and install cell point at {repository()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
