"""The sampler comparison harness, run as a user runs it: ``python -m samplers.compare``."""

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--samplers", "euler,dpmpp_2m,dpm_adaptive", "--steps", "4,8", "--seeds", "0", "--quiet"]
TIMING = {"seconds"}


def compare(*args, check=True, subprocess_run=False):
    """``python -m samplers.compare ARGS``: as a user runs it with ``subprocess_run``, else
    its main() in this process (the same program, without the start-up)."""
    if subprocess_run:
        result = subprocess.run(
            [sys.executable, "-m", "samplers.compare", *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300
        )
    else:
        import contextlib
        import io

        from samplers.compare import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            status = main([str(arg) for arg in args])
        result = subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())
    if check:
        assert result.returncode == 0, result.stderr
    return result


def rows(folder):
    with open(folder / "results.csv", newline="") as file:
        return list(csv.DictReader(file))


def without_timing(table):
    return [{key: value for key, value in row.items() if key not in TIMING} for row in table]


@pytest.fixture(scope="module")
def sweep_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    return out, compare("--out", out, *SMALL, subprocess_run=True)


@pytest.fixture(scope="module")
def sweep(sweep_run):
    return sweep_run[0]


def test_dpm_adaptive_runs_once_and_says_so(sweep_run):
    stderr = sweep_run[1].stderr
    assert stderr == "python -m samplers.compare: warning: dpm_adaptive chooses its own steps: run once, in the rows of steps 4\n"
    assert [row["steps"] for row in rows(sweep_run[0]) if row["sampler"] == "dpm_adaptive"] == ["4"]


def test_a_small_sweep_writes_all_four_outputs(sweep):
    table = rows(sweep)
    assert [(row["sampler"], row["steps"]) for row in table] == [
        *((sampler, steps) for sampler in ("euler", "dpmpp_2m") for steps in ("4", "8")), ("dpm_adaptive", "4"),
    ]
    assert list(table[0]) == [
        "sampler", "steps", "seed", "clock", "strength", "release", "nfe", "seconds",
        "preserve_max_err", "regen_mean", "monotonicity", "banding", "cam", "dam", "calibration",
        "model", "image", "image_sha256", "map", "map_sha256",
    ]
    # What the runs were made from: the example image and the preset map, by content.
    from kdiff_differential.models.builtin import load_example_image
    from kdiff_differential.editing.pipeline import resolve_map

    example = load_example_image()
    preset = resolve_map("gradient-x", example.shape[:2]).numpy()
    assert {(row["model"], row["image"], row["map"]) for row in table} == {("builtin", "example", "gradient-x")}
    assert {row["image_sha256"] for row in table} == {hashlib.sha256(f"{example.shape} uint8".encode() + example.tobytes()).hexdigest()}
    assert {row["map_sha256"] for row in table} == {hashlib.sha256(f"{preset.shape} {preset.dtype}".encode() + preset.tobytes()).hexdigest()}
    for name in ("grid.png", "tradeoff.png"):
        with Image.open(sweep / name) as image:
            image.verify()
    markdown = (sweep / "results.md").read_text()
    assert "| euler | 4 | 1 |" in markdown and "| dpm_adaptive | 4 | 1 |" in markdown  # sampler, steps, runs
    table_lines = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len({line.count("|") for line in table_lines}) == 1  # every row has the header's columns
    # One seed and one clock: each row is one run, and the header says so.
    assert markdown.startswith("Each row is one run (seed 0; clock timestep; strength 1; release faithful).")


def test_the_results_header_says_what_a_row_aggregates():
    from samplers.report import summary_header

    def row(sampler, steps, seed, clock):
        return {"sampler": sampler, "steps": steps, "seed": seed, "clock": clock, "strength": 1.0, "release": "smooth"}

    seeds = [row("euler", 10, seed, "timestep") for seed in (0, 1, 2)]
    assert summary_header(seeds) == "Each row is the median of its 3 runs, over seed 0, 1, 2 (clock timestep; strength 1; release smooth throughout)."
    both = [row("euler", 10, seed, clock) for seed in (0, 1) for clock in ("timestep", "step")]
    assert summary_header(both) == "Each row is the median of its 4 runs, over seed 0, 1; clock timestep, step (strength 1; release smooth throughout)."


def test_tradeoff_axes_include_zero_and_a_minimum_span():
    from samplers.report import MIN_SPAN, _y_limits

    low, high = _y_limits([0.2993, 0.3011])  # the noise of issue 12 no longer fills the panel
    assert low < 0 < 0.3011 < high
    low, high = _y_limits([0.0, 0.0])
    assert low < 0 and high >= MIN_SPAN
    low, high = _y_limits([-0.003, -0.001])
    assert low <= -MIN_SPAN and high > 0


def test_the_metrics_say_the_map_was_followed(sweep):
    for row in rows(sweep):
        assert float(row["preserve_max_err"]) == 0  # strength-0 pixels kept, to the 8-bit level
        assert float(row["regen_mean"]) > 0.1
        assert float(row["monotonicity"]) > 0.5


def test_nfe_counts_the_model_calls(sweep):
    nfe = {(row["sampler"], row["steps"]): int(row["nfe"]) for row in rows(sweep)}
    assert nfe["euler", "4"] == 4 and nfe["dpmpp_2m", "8"] == 8
    # The adaptive sampler picks its own steps (and takes one last call to reach sigma 0).
    assert nfe["dpm_adaptive", "4"] > 8


def test_fidelity_is_measured_against_the_converged_edit_of_the_same_seed(sweep):
    """The converged edit (Euler, 100 steps) is kept among the images; Euler comes closer
    to it with more steps, and every edit correlates with it."""
    assert (sweep / "images" / "euler-100steps-seed0-timestep-strength1-smooth.png").exists()
    fidelity = {(row["sampler"], row["steps"]): {name: float(row[name]) for name in ("cam", "dam", "calibration")} for row in rows(sweep)}
    assert fidelity["euler", "8"]["dam"] < fidelity["euler", "4"]["dam"]
    assert fidelity["euler", "8"]["calibration"] < fidelity["euler", "4"]["calibration"]
    assert all(0.5 < values["cam"] <= 1 for values in fidelity.values())


def test_without_the_samplers_extra_the_sweep_stops_before_any_run_in_one_line(tmp_path, monkeypatch, capsys):
    from samplers.compare import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    out = tmp_path / "out"
    assert main(["--out", str(out), *SMALL]) == 2
    error = capsys.readouterr().err
    assert error == "python -m samplers.compare: error: the sweep needs the samplers extra (missing: matplotlib): pip install -e '.[samplers]'\n"
    assert not out.exists()


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


def test_resume_refuses_rows_made_from_another_image_or_map(tmp_path):
    from kdiff_differential.models.builtin import load_example_image

    image = load_example_image()[::4, ::4].copy()
    Image.fromarray(image).save(tmp_path / "in.png")
    out = tmp_path / "out"
    run = ["--out", out, "--samplers", "euler", "--steps", "3", "--seeds", "0", "--quiet", "--image", tmp_path / "in.png"]
    compare(*run)
    before = (out / "results.csv").read_bytes()
    result = compare(*run, "--resume", "--map", "radial", check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "made from other inputs (map 'gradient-x' there, 'radial' now, map_sha256" in result.stderr
    image[0, 0] = 255 - image[0, 0]  # the same file name, other pixels
    Image.fromarray(image).save(tmp_path / "in.png")
    result = compare(*run, "--resume", check=False)
    assert result.returncode == 2 and "made from other inputs (image_sha256" in result.stderr
    assert (out / "results.csv").read_bytes() == before
    # A results.csv from before the inputs were recorded (the clock was then "threshold").
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.csv").write_text("sampler,steps,seed,threshold,strength,release\neuler,3,0,timestep,1.0,smooth\n")
    result = compare("--out", old, "--samplers", "euler", "--steps", "3", "--quiet", "--resume", check=False)
    assert result.returncode == 2 and "does not record the model, image and map" in result.stderr


def test_a_release_axis_compares_smooth_and_binary(tmp_path):
    out = tmp_path / "out"
    compare("--out", out, "--samplers", "euler", "--steps", "4", "--release", "smooth,binary", "--quiet")
    banding = {row["release"]: float(row["banding"]) for row in rows(out)}
    assert banding["smooth"] < banding["binary"]
    markdown = (out / "results.md").read_text()
    assert "| euler (smooth) | 4 |" in markdown and "| euler (binary) | 4 |" in markdown


def test_the_ray_executor_gives_the_same_table(sweep, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is part of the test install")
    out = tmp_path / "ray"
    compare("--out", out, *SMALL, "--executor", "ray")
    assert without_timing(rows(out)) == without_timing(rows(sweep))


@pytest.mark.parametrize(
    "args, words",
    [
        (["--samplers", "euler,warp"], "unknown sampler 'warp'"),
        (["--clock", "karras"], "unknown clock 'karras'; valid: timestep, step, sigma"),
        (["--map", "stripes"], "neither an existing file nor a preset (gradient-x, gradient-y, radial, full, none)"),
        (["--executor", "slurm"], "invalid choice: 'slurm'"),
        (["--steps", ""], "is not a comma-separated list of whole numbers >= 1"),
        (["--steps", "10,x"], "'10,x' is not a comma-separated list"),
        (["--steps", "0"], "whole numbers >= 1"),
        (["--seeds", "a"], "'a' is not a comma-separated list of whole numbers"),
        (["--strength", "2"], "give a number in [0, 1]"),
        (["--release", "soft"], "unknown release 'soft'; valid: smooth, binary, faithful"),
        (["--samplers", "dpm_fast,dpm_adaptive", "--clock", "step"], "--clock step needs a schedule"),
    ],
)
def test_bad_input_fails_before_any_run_in_one_line(tmp_path, args, words):
    out = tmp_path / "out"
    result = compare("--out", out, *args, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and words in result.stderr
    assert not (out / "results.csv").exists()


def test_the_step_clock_leaves_out_the_range_samplers_and_says_so(tmp_path):
    out = tmp_path / "out"
    result = compare("--out", out, "--samplers", "euler,dpm_fast", "--steps", "3", "--clock", "step,timestep", "--quiet")
    assert result.stderr == "python -m samplers.compare: warning: dpm_fast run without steps: their runs with the step clock are left out\n"
    assert sorted((row["sampler"], row["clock"]) for row in rows(out)) == [
        ("dpm_fast", "timestep"), ("euler", "step"), ("euler", "timestep"),
    ]
    assert "| dpm_fast | 3 | 1 |" in (out / "results.md").read_text() and "| euler | 3 | 2 |" in (out / "results.md").read_text()


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


def test_an_input_inside_out_is_never_written_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mask = Image.new("L", (16, 16), 255)
    mask.save(out / "grid.png")
    before = (out / "grid.png").read_bytes()
    result = compare("--out", out, "--map", out / "grid.png", *SMALL, check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "over the input --map" in result.stderr
    assert (out / "grid.png").read_bytes() == before and not (out / "results.csv").exists()
