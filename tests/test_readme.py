"""The README and docs/ as a newcomer reads them: the README's example runs as written,
every Python block imports from the package's top level, the docs' self-contained blocks
run, every ``kdiff-differential`` command parses, every link and picture is there, and the
first screen is right on a CPU machine."""

import re
import runpy
import shlex
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [ROOT / "README.md", *DOCS]
# A block that needs what the tests cannot have (a real model, a CLIPSeg model) says so
# on its first line, and is checked for its imports only.
NEEDS = re.compile(r"^# needs a (diffusers model|CLIPSeg model|flow model's velocity function|CompVis ldm model)\b")


def blocks(text: str, language: str) -> list[str]:
    """The fenced blocks of ``language``, indented ones (inside a list item) dedented."""
    found = re.findall(rf"^( *)```{language}\n(.*?)^\1```", text, re.S | re.M)
    return ["\n".join(line[len(indent):] for line in body.splitlines()) + "\n" for indent, body in found]


def runnable(page: Path) -> list[str]:
    return [block for block in blocks(page.read_text(), "python") if not NEEDS.match(block)]


def test_the_readme_is_a_front_page_that_links_each_doc():
    assert len(README.splitlines()) <= 300
    for doc in ("cli", "python", "models", "semantics", "comfyui", "samplers"):
        assert f"](docs/{doc}.md)" in README


@pytest.mark.slow
def test_the_readme_python_example_runs_as_written(tmp_path, monkeypatch, capsys):
    """The edit_image example: the disk's box is cropped, kept pixels are the input's
    bytes, the disk itself is regenerated."""
    (example,) = blocks(README, "python")
    monkeypatch.chdir(tmp_path)
    script = tmp_path / "example.py"
    script.write_text(example)
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    edited = np.asarray(Image.open(tmp_path / "edited.png"))
    from skimage import data

    image = data.astronaut()[::2, ::2]
    assert edited.shape == image.shape
    # The map as the example draws it (a disk of radius 28), feathered by 12 px: beyond, nothing changes.
    rows, cols = np.mgrid[:256, :256]
    distance = np.hypot(rows - 65, cols - 112)
    assert np.array_equal(edited[distance > 28 + 12 + 1], image[distance > 28 + 12 + 1])
    assert np.abs(edited[distance < 20].astype(int) - image[distance < 20]).mean() > 20
    # The model ran on the disk's box alone, not the whole photo.
    crop = re.search(r"crop: the model runs on (\d+)x(\d+) at x \d+, y \d+ of 256x256", printed)
    assert crop and int(crop[1]) * int(crop[2]) <= 256 * 256 / 2, printed


@pytest.mark.parametrize("page", [pytest.param(doc, marks=pytest.mark.slow) if doc.name == "python.md" else doc for doc in DOCS],
                         ids=lambda page: page.name)
def test_the_docs_python_blocks_run(page, tmp_path, monkeypatch):
    """Each page's blocks, but those marked as needing a model the tests lack, run in
    order in one namespace, as a reader runs them one after another."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__main__"}
    for number, block in enumerate(runnable(page)):
        exec(compile(block, f"{page.name}: python block {number + 1}", "exec"), namespace)


def test_the_docs_have_blocks_that_run_and_mark_the_others():
    run = {page.name: len(runnable(page)) for page in DOCS}
    assert run["python.md"] >= 4 and run["cli.md"] >= 2, run
    marked = [block for page in DOCS for block in blocks(page.read_text(), "python") if NEEDS.match(block)]
    # A marked block needs a model: it loads one by name, or takes one the reader brings.
    assert marked and all(re.search(r"load_pipeline\(|open_model\(\"\./|edit_image\(\"\./|Editor\(\"\./|find_model\(\"\./|prompt_map\(|velocity|model = \.\.\.", block)
                          for block in marked)


def test_the_python_blocks_import_from_the_package_only():
    code = "\n".join(block for page in PAGES for block in blocks(page.read_text(), "python"))
    imports = re.findall(r"^\s*from (kdiff_differential[\w.]*) import", code, re.M)
    assert imports and set(imports) == {"kdiff_differential"}, imports
    assert not re.search(r"^\s*import kdiff_differential\.", code, re.M)


def commands(text: str) -> list[list[str]]:
    """The ``kdiff-differential`` command lines of the bash blocks, each as its arguments
    (continuation lines joined, environment assignments and comments dropped)."""
    found = []
    for block in blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                words = words[1:]
            if words and words[0] == "kdiff-differential":
                found.append(words[1:])
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_command_line_parses(page):
    from kdiff_differential.cli import build_parser

    lines = commands(page.read_text())
    for arguments in lines:
        try:
            build_parser().parse_args(arguments)
        except (SystemExit, ValueError):  # argparse's exit, or the command line's one-line error
            pytest.fail(f"{page.name}: kdiff-differential {shlex.join(arguments)} does not parse")
    if page.name in ("README.md", "cli.md", "models.md"):
        assert lines


def test_the_command_line_page_names_every_option():
    from kdiff_differential.cli import build_parser

    page = (ROOT / "docs" / "cli.md").read_text()
    options = [option for action in build_parser()._actions for option in action.option_strings if option.startswith("--")]
    assert options and [option for option in options if not re.search(rf"{re.escape(option)}(?![\w-])", page)] == []


def test_a_command_that_does_not_parse_is_caught():
    """The check above sees a wrong flag in a page."""
    from kdiff_differential.cli import build_parser

    (arguments,) = commands("```bash\nHF_HUB_OFFLINE=1 kdiff-differential --out x.png \\\n    --grow -8 --colour-match  # the flag is --color-match\n```\n")
    assert arguments == ["--out", "x.png", "--grow", "-8", "--colour-match"]
    with pytest.raises((SystemExit, ValueError)):
        build_parser().parse_args(arguments)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_and_picture_is_there(page):
    """Relative links and images point at files that exist, and #anchors at headings."""
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked.read_text()), f"{page.name}: {target}"


def anchors(text: str) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation but - and _ dropped,
    spaces as -."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_first_screen_is_right_on_a_cpu_machine():
    """The top commands: clone, CPU torch before the install, the install and test commands
    CI runs, and how long the tests take."""
    top = blocks(README, "bash")[0]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = ci[ci.index("# The README's install command:") + 1]
    test = ci[ci.index("# The README's test command:") + 1]
    lines = [line.split("#")[0].strip() for line in top.splitlines()]
    steps = ["pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu", install, "kdiff-differential --out result.png", test]
    assert [lines.index(step) for step in steps] == sorted(lines.index(step) for step in steps)
    # Measured from a fresh clone on 2 idle cores: 297 to 350 s of tests.
    assert "about 6 minutes on 2 idle CPU cores (a loaded machine takes longer)" in top
    assert "about 6 minutes on 2 idle CPU cores (a loaded machine takes longer" in README.split("### The tests")[1]


def test_the_clone_address_is_the_projects_repository():
    repository = re.search(r'^Repository = "(.+?)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    clones = re.findall(r"git clone (\S+) kdiff-differential", README)
    assert clones == [repository]
