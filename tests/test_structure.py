"""The house's rules, read from the code: layers with no arrow back up, no helper imported
by a private name, each public name from the one module that defines it, short
docstrings, and no benchmark figure in a comment."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdiff_differential"
# The layers, lowest first: a module may import its own layer and those below it only.
LAYERS = (
    {"choices", "errors", "quiet", "executors", "pixels"},
    {"maps"},
    {"files"},
    {"core"},
    {"models"},
    {"stages"},
    {"editing"},
    {"cli", "__main__", "__init__"},
)


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def part(path: Path) -> str:
    """The first name under the package: its sub-package or top-level module."""
    first = path.relative_to(PACKAGE).parts[0]
    return first[:-3] if first.endswith(".py") else first


def layer(name: str) -> int:
    return next(index for index, names in enumerate(LAYERS) if name in names)


def imported(source: str, package: str) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, names) of every import of kdiff_differential in ``source``,
    at any depth, for a module in ``package`` (its dotted name for relative imports)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module == "kdiff_differential" or module.startswith("kdiff_differential."):
                found.append((node.lineno, module, [alias.name for alias in node.names]))
    return found


def imports_of(path: Path) -> list[tuple[int, str, list[str]]]:
    dotted = path.relative_to(ROOT).with_suffix("").parts
    package = ".".join(dotted if path.name == "__init__.py" else dotted[:-1])
    return imported(path.read_text(), package.removesuffix(".__init__"))


def upward(path_part: str, imports: list[tuple[int, str, list[str]]]) -> list[str]:
    """The imports of a module of ``path_part`` that run back up the layers."""
    targets = [(line, module, module.split(".")[1] if "." in module else "__init__") for line, module, _ in imports]
    return [f"{line}: {module}" for line, module, target in targets if layer(target) > layer(path_part)]


def test_every_module_belongs_to_a_layer() -> None:
    assert {part(path) for path in modules()} <= set().union(*LAYERS)


def test_no_import_runs_back_up_the_layers() -> None:
    found = [f"{path.relative_to(ROOT)}:{line}" for path in modules() for line in upward(part(path), imports_of(path))]
    assert found == []


def test_a_planted_upward_import_is_seen() -> None:
    """The check reads a relative import as the interpreter resolves it."""
    planted = imported("from ..editing.settings import EditSettings\n", "kdiff_differential.maps")
    assert upward("maps", planted) == ["1: kdiff_differential.editing.settings"]
    assert upward("editing", imported("from ..maps.reading import strength_array\n", "kdiff_differential.editing")) == []


def test_no_helper_is_imported_by_a_private_name() -> None:
    private = []
    for path in [*modules(), *sorted((ROOT / "samplers").glob("*.py"))]:
        for line, module, names in imports_of(path):
            private += [f"{path.relative_to(ROOT)}:{line} {module}.{name}" for name in names
                        if name.startswith("_") and not name.startswith("__")]
    assert private == []


def test_no_docstring_is_over_30_lines() -> None:
    long = []
    for path in [*modules(), *sorted((ROOT / "samplers").glob("*.py"))]:
        tree = ast.parse(path.read_text())
        for node in [tree, *ast.walk(tree)]:
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc and len(doc.splitlines()) > 30:
                    long.append(f"{path.relative_to(ROOT)}: {getattr(node, 'name', 'module')} ({len(doc.splitlines())} lines)")
    assert long == []


# A figure that reads as a measurement: a time per call, a banding or DAM value, "measured".
MEASURED = re.compile(r"measured|\d\s*(us|µs|ms)\b|\b(banding|DAM|CAM)\b[^.;]*\d", re.IGNORECASE)


def test_no_comment_holds_a_benchmark_figure() -> None:
    """Figures belong in samplers/PERFORMANCE.md, which a comment may point to."""
    figures = []
    for path in modules():
        for token in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if token.type == tokenize.COMMENT and MEASURED.search(token.string):
                figures.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {token.string.strip()}")
    assert figures == []
