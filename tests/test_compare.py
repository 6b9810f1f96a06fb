"""The sampler comparison harness, run as a user runs it: ``python -m samplers.compare``."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--samplers", "euler,dpmpp_2m,dpm_adaptive", "--steps", "4,8", "--seeds", "0", "--quiet"]
TIMING = {"seconds"}


def compare(*args, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "samplers.compare", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def rows(folder):
    with open(folder / "results.csv", newline="") as file:
        return list(csv.DictReader(file))


def without_timing(table):
    return [{key: value for key, value in row.items() if key not in TIMING} for row in table]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    compare("--out", out, *SMALL)
    return out


def test_a_small_sweep_writes_all_four_outputs(sweep):
    table = rows(sweep)
    assert [(row["sampler"], row["steps"]) for row in table] == [
        (sampler, steps) for sampler in ("euler", "dpmpp_2m", "dpm_adaptive") for steps in ("4", "8")
    ]
    assert list(table[0]) == [
        "sampler", "steps", "seed", "threshold", "strength", "release", "nfe", "seconds",
        "preserve_max_err", "regen_mean", "monotonicity", "banding",
    ]
    for name in ("grid.png", "tradeoff.png"):
        with Image.open(sweep / name) as image:
            image.verify()
    markdown = (sweep / "results.md").read_text()
    assert "| euler | 4 | 1 |" in markdown and "| dpm_adaptive | 8 | 1 |" in markdown


def test_the_metrics_say_the_map_was_followed(sweep):
    for row in rows(sweep):
        assert float(row["preserve_max_err"]) == 0  # strength-0 pixels kept, to the 8-bit level
        assert float(row["regen_mean"]) > 0.1
        assert float(row["monotonicity"]) > 0.5


def test_nfe_counts_the_model_calls(sweep):
    nfe = {(row["sampler"], row["steps"]): int(row["nfe"]) for row in rows(sweep)}
    assert nfe["euler", "4"] == 4 and nfe["dpmpp_2m", "8"] == 8
    # The adaptive sampler picks its own steps (and takes one last call to reach sigma 0).
    assert nfe["dpm_adaptive", "4"] == nfe["dpm_adaptive", "8"] > 8


def test_resume_skips_finished_runs(sweep, tmp_path):
    out = tmp_path / "out"
    compare("--out", out, "--samplers", "euler", "--steps", "4", "--seeds", "0", "--quiet")
    first = rows(out)
    compare("--out", out, "--samplers", "euler,dpmpp_2m", "--steps", "4", "--seeds", "0", "--quiet", "--resume")
    second = rows(out)
    assert second[0] == first[0]  # the finished run was not redone: even its time is the same
    assert [row["sampler"] for row in second] == ["euler", "dpmpp_2m"]
    refused = compare("--out", out, *SMALL, check=False)
    assert refused.returncode == 2 and "--resume" in refused.stderr


def test_a_release_axis_compares_smooth_and_binary(tmp_path):
    out = tmp_path / "out"
    compare("--out", out, "--samplers", "euler", "--steps", "4", "--release", "smooth,binary", "--quiet")
    banding = {row["release"]: float(row["banding"]) for row in rows(out)}
    assert banding["smooth"] < banding["binary"]
    markdown = (out / "results.md").read_text()
    assert "| euler (smooth) | 4 | 1 |" in markdown and "| euler (binary) | 4 | 1 |" in markdown


def test_the_ray_executor_gives_the_same_table(sweep, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is part of the test install")
    out = tmp_path / "ray"
    compare("--out", out, *SMALL, "--executor", "ray")
    assert without_timing(rows(out)) == without_timing(rows(sweep))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--samplers", "euler,warp"], "unknown sampler 'warp'"),
        (["--threshold", "karras"], "unknown threshold 'karras'; valid: timestep, step, sigma"),
        (["--map", "stripes"], "neither an existing file nor a preset (gradient-x, gradient-y, radial, full, none)"),
        (["--executor", "slurm"], "invalid choice: 'slurm'"),
        (["--steps", ""], "is not a comma-separated list of whole numbers >= 1"),
        (["--steps", "10,x"], "'10,x' is not a comma-separated list"),
        (["--steps", "0"], "whole numbers >= 1"),
        (["--seeds", "a"], "'a' is not a comma-separated list of whole numbers"),
        (["--strength", "2"], "give a number in [0, 1]"),
        (["--release", "soft"], "unknown release 'soft'; valid: smooth, binary"),
    ],
)
def test_bad_input_fails_before_any_run_in_one_line(tmp_path, args, words):
    out = tmp_path / "out"
    result = compare("--out", out, *args, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and words in result.stderr
    assert not (out / "results.csv").exists()


def test_an_out_that_is_a_file_is_refused(tmp_path):
    existing = tmp_path / "results"
    existing.write_text("keep me")
    result = compare("--out", existing, *SMALL, check=False)
    assert result.returncode == 2 and "is an existing file" in result.stderr
    assert existing.read_text() == "keep me"


def test_ray_missing_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None; from samplers.compare import main; "
        f"sys.exit(main(['--out', {str(tmp_path / 'out')!r}, '--executor', 'ray']))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "pip install -e '.[ray]'" in result.stderr and result.stderr.count("\n") == 1
