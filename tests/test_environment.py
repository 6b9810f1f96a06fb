"""A broken PyTorch install (a torch and a torchvision that do not match, a missing torch,
k-diffusion that does not import) ends the command line in one line naming the fix, and
the test suite in one message, not a traceback per module. The breakage is simulated by
a folder put first on PYTHONPATH whose package raises on import, as the real one does."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from kdiff_differential.cli import environment

ROOT = Path(__file__).resolve().parents[1]
NMS = "operator torchvision::nms does not exist"


def broken(tmp_path: Path, package: str, error: str) -> dict[str, str]:
    """The environment of a Python whose ``import package`` raises ``error``."""
    shim = tmp_path / "shim"
    (shim / package).mkdir(parents=True)
    (shim / package / "__init__.py").write_text(f"raise {error}\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))}


def command(tmp_path: Path, env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdiff_differential", *arguments], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_torchvision_that_does_not_match_torch_is_one_line_naming_both_and_the_fix(tmp_path: Path) -> None:
    done = command(tmp_path, broken(tmp_path, "torchvision", f"RuntimeError({NMS!r})"), "--out", "x.png")
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr
    assert line.startswith("kdiff-differential: error: torchvision") and NMS in line
    assert f"torch {metadata.version('torch')}" in line and f"torchvision {metadata.version('torchvision')}" in line
    assert "pip install --force-reinstall torch torchvision --index-url https://download.pytorch.org/whl/cpu" in line
    assert not (tmp_path / "x.png").exists()


def test_help_and_version_answer_even_so(tmp_path: Path) -> None:
    env = broken(tmp_path, "torchvision", f"RuntimeError({NMS!r})")
    assert command(tmp_path, env, "--help").returncode == 0
    version = command(tmp_path, env, "--version")
    assert version.returncode == 0 and version.stdout.strip().endswith(metadata.version("kdiff-differential"))


def test_a_missing_torch_is_one_line_with_the_install_command(tmp_path: Path) -> None:
    done = command(tmp_path, broken(tmp_path, "torch", "ModuleNotFoundError(\"No module named 'torch'\")"), "--out", "x.png")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "PyTorch cannot be imported" in done.stderr and "pip install torch torchvision --index-url" in done.stderr


def test_k_diffusion_that_does_not_import_is_one_line_with_the_install_command(tmp_path: Path) -> None:
    done = command(tmp_path, broken(tmp_path, "k_diffusion", "ModuleNotFoundError(\"No module named 'pkg_resources'\")"),
                   "--out", "x.png")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert "k-diffusion cannot be imported" in done.stderr and "pkg_resources" in done.stderr
    assert done.stderr.rstrip().endswith("pip install -e .")


@pytest.mark.parametrize("torch_version, torchvision_version", [
    ("2.0.0", "0.15.1"), ("2.0.1", "0.15.2"), ("2.1.2", "0.16.2"), ("2.3.0", "0.18.0"), ("2.4.1+cpu", "0.19.1"), ("2.5.1", "0.20.1"), ("2.6.0+cu124", "0.21.0"),
])
def test_the_matching_torchvision_is_pytorchs_pair(torch_version: str, torchvision_version: str) -> None:
    """Pairs from PyTorch's compatibility table (torchvision's README)."""
    assert environment.matching_torchvision(torch_version) == torchvision_version


def test_a_mismatched_pair_is_told_which_torchvision_keeps_this_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"torch": "2.5.1+cpu", "torchvision": "0.21.0"}
    monkeypatch.setattr(environment, "_version", installed.__getitem__)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import torchvision now raises ImportError
    problem = environment.torch_problem()
    assert problem is not None and "torch 2.5.1+cpu, torchvision 0.21.0" in problem
    assert "keep torch 2.5.1: pip install torchvision==0.20.1 --index-url" in problem
    with pytest.raises(ValueError, match="torchvision does not work"):
        environment.check_torch()


def test_a_whole_install_has_no_problem() -> None:
    assert environment.torch_problem() is None


def test_the_test_suite_stops_in_one_message_not_an_error_per_module(tmp_path: Path) -> None:
    env = broken(tmp_path, "torchvision", f"RuntimeError({NMS!r})")
    modules = ["tests/test_clocks.py", "tests/test_denoiser.py", "tests/test_samplers.py"]  # each imports k_diffusion
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *modules], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == pytest.ExitCode.USAGE_ERROR, output
    assert output.count("ERROR collecting") == 1 and "Traceback" not in output and "raise RuntimeError" not in output, output
    assert "broken install: torchvision does not work with this torch" in output
    assert "pip install --force-reinstall torch torchvision" in output


def test_an_install_error_is_said_as_it_is_without_the_commands_words(capsys: pytest.CaptureFixture) -> None:
    """Putting a message in the command line's words may import the broken package: an
    InstallError is printed as it is."""
    from kdiff_differential.errors import InstallError, command_status

    def work() -> None:
        raise InstallError("torch is broken; mend it: pip install torch")

    def translate(message: str) -> str:
        raise RuntimeError("operator torchvision::nms does not exist")

    assert command_status("prog", work, "interrupted", translate) == 2
    assert capsys.readouterr().err == "prog: error: torch is broken; mend it: pip install torch\n"
