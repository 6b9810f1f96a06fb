"""quiet_warnings: k-diffusion's dependency noise hidden where a script asks, nowhere else."""

import subprocess
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCHSDE = "torchsde._brownian.brownian_interval"


def python(code: str) -> subprocess.CompletedProcess:
    """A fresh interpreter, with Python's default filters (no pytest ones) and every warning shown."""
    return subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def torchsde_warning(text: str) -> str:
    # Issued as torchsde issues it, from its module, so that module filters see the same thing.
    return f"warnings.warn_explicit({text!r}, UserWarning, 'brownian_interval.py', 599, module={TORCHSDE!r})"


def test_without_it_a_script_sees_both_warnings() -> None:
    done = python(f"import warnings, k_diffusion; {torchsde_warning('Should have ta>=t0 but got ta=0.1 and t0=0.2.')}")
    assert done.returncode == 0, done.stderr
    assert "pkg_resources is deprecated" in done.stderr and "Should have ta>=t0" in done.stderr


def test_inside_it_both_are_hidden_and_others_still_show() -> None:
    code = f"""
import warnings
from kdiff_differential import quiet_warnings
with quiet_warnings():
    import k_diffusion
    {torchsde_warning('Should have ta>=t0 but got ta=0.1 and t0=0.2.')}
    {torchsde_warning('Should have tb<=t1 but got tb=1.1 and t1=1.0.')}
    warnings.warn('a warning of the user own')
"""
    done = python(code)
    assert done.returncode == 0, done.stderr
    assert "pkg_resources" not in done.stderr and "Should have" not in done.stderr
    assert "a warning of the user own" in done.stderr


def test_importing_the_package_changes_no_filter_and_leaving_restores_them() -> None:
    before = list(warnings.filters)
    # torch, which the package imports, adds filters of its own: compare after it.
    code = "import warnings, torch; before = list(warnings.filters); import kdiff_differential; print(warnings.filters == before)"
    assert python(code).stdout.strip() == "True"
    from kdiff_differential import quiet_warnings

    with quiet_warnings():
        assert warnings.filters != before
    assert warnings.filters == before
