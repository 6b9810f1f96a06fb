"""The command line as a user runs it: in a subprocess, on the built-in model."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from kdiff_differential import CLOCKS, RELEASES, SAMPLERS
from kdiff_differential.cli import main
from kdiff_differential.editing.figures import GAP, LABEL
from kdiff_differential.maps.presets import PRESETS

from conftest import kdiff, pixels

FAST = ["--steps", "3", "--quiet"]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A 48x40 input image, a same-aspect map (left half keep, right half change), a
    narrower map, and things that are not images or models; made afresh for each test
    (a few small files), so that no test sees another's outputs."""
    folder = tmp_path / "cli"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "in.png")
    halves = np.zeros((20, 24), np.uint8)
    halves[:, 12:] = 255
    Image.fromarray(halves).save(folder / "map.png")
    Image.fromarray(halves[:, 6:]).save(folder / "narrow-map.png")
    # The same halves as a 16-bit PNG whose left half is 250/65535 (an 8-bit reading makes
    # it nearly white) and as a float TIFF in 0..1 (an 8-bit reading makes it all black).
    Image.fromarray(np.where(halves > 0, 65535, 250).astype(np.uint16)).save(folder / "map-16bit.png")
    Image.fromarray((halves / 255).astype(np.float32)).save(folder / "map-float.tif")
    Image.fromarray(np.where(halves > 0, np.nan, 0).astype(np.float32)).save(folder / "map-nan.tif")
    (folder / "notes.png").write_text("not an image")
    (folder / "link-to-in.png").symlink_to("in.png")
    os.link(folder / "map.png", folder / "hard-link-to-map.png")
    (folder / "folder.png").mkdir()
    (folder / "not-a-model").mkdir()
    (folder / "out").mkdir()
    return folder


def test_demo_writes_the_result_and_figures_and_nothing_else(tmp_path: Path) -> None:
    done = kdiff("--out", "result.png", "--save-strip", "--save-masks", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # not a TTY: no progress bar
    assert pixels(tmp_path / "result.png").shape == (256, 256, 3)
    # original | map | decoded | result: the default composite shows the decode it started from.
    assert pixels(tmp_path / "result-strip.png").shape == (LABEL + 256, 4 * 256 + 3 * GAP, 3)
    assert pixels(tmp_path / "result-masks.png").ndim == 3
    # Written through temporary files that were renamed: none is left over.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result-masks.png", "result-strip.png", "result.png"]


@pytest.mark.parametrize("map_file", ["map.png", "map-16bit.png", "map-float.tif"])
def test_image_and_map_files_keep_and_change_the_right_halves(files: Path, map_file: str) -> None:
    out = f"out/halves-{map_file}.png"
    done = kdiff("--image", "in.png", "--map", map_file, "--out", out, *FAST, cwd=files)
    assert done.returncode == 0, done.stderr
    original, result = pixels(files / "in.png"), pixels(files / out)
    assert result.shape == original.shape
    change = np.abs(result.astype(int) - original.astype(int))
    if map_file == "map-16bit.png":  # strength 250/65535: released only at the last call
        assert change[:, :20].mean() < 2
    else:
        assert change[:, :20].max() <= 1  # map 0: kept, to 8-bit rounding
    assert change[:, 28:].mean() > 20  # map 1: regenerated


# Some runs call main() in-process, the function the script calls, where a subprocess
# would add only start-up time.


def test_keep_map_swaps_the_halves(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--map", "map.png", "--keep-map", "--out", "out/kept.png", *FAST]) == 0
    change = np.abs(pixels(files / "out/kept.png").astype(int) - pixels(files / "in.png").astype(int))
    assert change[:, 28:].max() <= 1
    assert change[:, :20].mean() > 20


def test_with_keep_map_the_strip_shows_the_map_file_as_given(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--map", "map.png", "--keep-map", "--save-strip", "--out", "out/kept-strip.png", *FAST]) == 0
    shown = pixels(files / "out/kept-strip-strip.png")[LABEL:, 48 + GAP : 2 * 48 + GAP, 0]
    given = np.array(Image.open(files / "map.png").resize((48, 40), Image.BILINEAR))
    assert np.abs(shown.astype(int) - given).max() <= 1


def test_a_map_of_another_aspect_is_stretched_with_a_warning(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--map", "narrow-map.png", "--out", "out/narrow.png", *FAST]) == 0
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and "warning" in stderr and "stretched" in stderr
    assert pixels(files / "out/narrow.png").shape == (40, 48, 3)


def test_dpm_adaptive_says_in_one_line_that_it_ignores_steps(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(files)
    adaptive = ["--image", "in.png", "--sampler", "dpm_adaptive", "--quiet"]
    assert main([*adaptive, "--steps", "5", "--out", "out/adaptive-5.png"]) == 0
    assert capsys.readouterr().err == "kdiff-differential: warning: --sampler dpm_adaptive chooses its own steps: --steps 5 is ignored\n"
    assert main([*adaptive, "--out", "out/adaptive.png"]) == 0
    assert capsys.readouterr().err == ""
    assert (files / "out/adaptive-5.png").read_bytes() == (files / "out/adaptive.png").read_bytes()


@pytest.mark.parametrize("sampler", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_one_step_runs_with_the_sde_samplers_k_diffusion_cannot_start_at_zero(
    files: Path, sampler: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--sampler", sampler, "--steps", "1", "--quiet", "--out", f"out/one-{sampler}.png"]) == 0
    assert capsys.readouterr().err == ""
    assert pixels(files / f"out/one-{sampler}.png").shape == pixels(files / "in.png").shape


def test_a_partial_denoise_that_leaves_only_the_last_step_is_refused_in_one_line(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """--steps 1 --denoise 0.3 keeps the last step of 3: from the model's sigma_min to 0."""
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--steps", "1", "--denoise", "0.3", "--quiet", "--out", "out/partial.png"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "give more steps or a larger denoise" in error, error
    assert not (files / "out/partial.png").exists()
    assert main(["--image", "in.png", "--steps", "1", "--denoise", "0.3", "--clock", "step", "--quiet", "--out", "out/partial.png"]) == 0


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset(files: Path, preset: str) -> None:
    done = kdiff("--image", "in.png", "--map", preset, "--out", f"out/{preset}.png", *FAST, cwd=files)
    assert done.returncode == 0, done.stderr
    change = np.abs(pixels(files / f"out/{preset}.png").astype(int) - pixels(files / "in.png").astype(int))
    if preset == "none":
        assert change.max() <= 1
    else:
        assert change.mean() > 5


def test_release_binary_bands_where_smooth_eases_in(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--release picks the wrapper's release rule: on a flat grey image with a left-to-right
    ramp, binary changes in a few flat bands, smooth in many small steps."""
    from samplers.metrics import banding

    monkeypatch.chdir(files)
    Image.fromarray(np.full((24, 96, 3), 128, np.uint8)).save("grey.png")
    change = {}
    for release in ("binary", "smooth"):
        out = f"out/grey-{release}.png"
        assert main(["--image", "grey.png", "--map", "gradient-x", "--release", release, "--out", out, *FAST]) == 0
        change[release] = banding(pixels(files / out), pixels(files / "grey.png"), np.tile(np.linspace(0, 1, 96), (24, 1)))
    assert change["smooth"] < change["binary"] / 2


def test_same_seed_same_bytes_other_seed_other_image(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seeded = ["--image", "in.png", "--map", "radial", "--sampler", "dpmpp_2m_sde", *FAST, "--seed"]
    for name in ("a", "b"):  # two processes
        done = kdiff(*seeded, "1", "--out", f"out/seed-{name}.png", cwd=files)
        assert done.returncode == 0, done.stderr
    monkeypatch.chdir(files)
    assert main([*seeded, "2", "--out", "out/seed-c.png"]) == 0
    a, b, c = ((files / f"out/seed-{name}.png").read_bytes() for name in "abc")
    assert a == b
    assert a != c


BAD = {
    "missing image": (["--image", "absent.png"], "--image absent.png: no such file"),
    "an image folder with an image file as out": (["--image", "folder.png"], "--image folder.png is a folder"),
    "image that is not an image": (["--image", "notes.png"], "--image notes.png: not an image"),
    "missing map": (["--image", "in.png", "--map", "absent-map.png"], "--map absent-map.png: neither an existing file"),
    "map that is not an image": (["--image", "in.png", "--map", "notes.png"], "--map notes.png: not an image"),
    "map with NaN": (["--image", "in.png", "--map", "map-nan.tif"], "NaN or inf"),
    "unknown preset": (["--map", "gradient-z"], "gradient-x, gradient-y, radial, full, none"),
    "unknown sampler": (["--sampler", "euler_b"], "dpmpp_2m"),
    "unknown schedule": (["--schedule", "cosine"], "karras"),
    "zero steps": (["--steps", "0"], "--steps"),
    "zero denoise": (["--denoise", "0"], "(0, 1]"),
    "denoise above 1": (["--denoise", "1.5"], "(0, 1]"),
    "negative strength": (["--strength", "-0.1"], "[0, 1]"),
    "strength above 1": (["--strength", "1.1"], "[0, 1]"),
    "missing model": (["--model", "no-such-model"], "no such file or folder, and not a Hub id"),
    "not a model": (["--model", "not-a-model"], "not a diffusers folder (no model_index.json)"),
    "cuda without cuda": (["--device", "cuda"], "--device cpu"),
    "step clock on a range sampler": (["--sampler", "dpm_fast", "--clock", "step"], "use the timestep or sigma clock"),
    "A1111 sampler name with another schedule": (["--sampler", "DPM++ 2M Karras", "--schedule", "exponential"], "give one"),
    "a seed twice": (["--seeds", "1,1"], "names a seed twice"),
    "a seed too large": (["--seed", "99999999999999999999999"], "out of range: give a whole number in [0, 18446744073709551615]"),
    "seeds too large": (["--seeds", "1,99999999999999999999999"], "99999999999999999999999 is out of range"),
    "seeds that are not numbers": (["--seeds", "1,b"], "comma-separated list of whole numbers"),
    "both --seed and --seeds": (["--seed", "1", "--seeds", "1,2"], "not allowed with argument"),
    "out over the image": (["--image", "in.png", "--out", "./in.png"], "over the input"),
    "out in a missing folder": (["--out", "nowhere/result.png"], "does not exist"),
    "out where nothing can be written": (["--out", "/sys/result.png"], "--out /sys/result.png: cannot write in /sys"),
    "out in a folder of the kernel's": (["--out", "/proc/result.png"], "--out /proc/result.png: cannot write in /proc"),
}

# Every input file is protected, however the output's path reaches it.
OVER_INPUTS = {
    "out over the map": ["--image", "in.png", "--map", "map.png", "--out", "map.png"],
    "out over the image through a symlink": ["--image", "in.png", "--out", "link-to-in.png"],
    "out over the image spelled otherwise": ["--image", "in.png", "--out", "out/../in.png"],
    "out over the map through a hard link": ["--image", "in.png", "--map", "map.png", "--out", "hard-link-to-map.png"],
    "strip over the map": ["--image", "in.png", "--map", "map-strip.png", "--out", "map.png", "--save-strip"],
    "masks over the image": ["--image", "in-masks.png", "--out", "in.png", "--save-masks", "--map", "full"],
}


@pytest.mark.parametrize("case", OVER_INPUTS)
def test_no_input_file_is_written_over(files: Path, case: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    # in-masks.png and map-strip.png are inputs only here: copies made for these cases.
    for name, source in (("in-masks.png", "in.png"), ("map-strip.png", "map.png")):
        (files / name).write_bytes((files / source).read_bytes())
    before = {path: path.read_bytes() for path in files.iterdir() if path.is_file()}
    monkeypatch.chdir(files)
    assert main([*OVER_INPUTS[case], *FAST]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "over the input" in error, error
    assert {path: path.read_bytes() for path in files.iterdir() if path.is_file()} == before


@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_one_line_and_no_traceback(files: Path, case: str) -> None:
    args, hint = BAD[case]
    if "--out" not in args:
        args = [*args, "--out", "out/bad.png"]
    before = (files / "in.png").read_bytes()
    done = kdiff(*args, *FAST, cwd=files)
    assert done.returncode != 0
    assert done.stderr.endswith("\n") and done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert hint in done.stderr
    assert not (files / "out/bad.png").exists()
    assert (files / "in.png").read_bytes() == before


def test_a_write_that_fails_at_the_end_says_where_the_result_went(files: Path, monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """The folder was writable when the run began; the disk then fills: one line, and the
    result is kept in a temporary folder it names."""
    import errno

    from kdiff_differential.files import images

    write = images.write_image
    failed: list[str] = []

    def full_disk(image: np.ndarray, path: str) -> None:
        if not failed:
            failed.append(path)
            raise OSError(errno.ENOSPC, "No space left on device")
        write(image, path)

    monkeypatch.setattr(images, "write_image", full_disk)
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--out", "out/full.png", *FAST]) == 2
    said = capsys.readouterr().err
    rescued = Path(re.search(r"the result is in (\S+)$", said.strip())[1])
    assert said.count("\n") == 1 and "could not write out/full.png (No space left on device)" in said, said
    assert failed == ["out/full.png"] and not (files / "out/full.png").exists()
    assert pixels(rescued).shape == pixels(files / "in.png").shape


def test_readme_quick_start_is_clone_install_demo_tests_and_ci_installs_the_same() -> None:
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    ci = (root / ".ci" / "run").read_text().splitlines()
    # .ci/run marks the README's commands with comments; the next line is the command.
    install = ci[ci.index("# The README's install command:") + 1]
    test = ci[ci.index("# The README's test command:") + 1]
    quick_start = readme[readme.index("## Quick start") :]
    repository = re.search(r'^Repository = "(.+?)"', (root / "pyproject.toml").read_text(), re.M).group(1)
    steps = (
        f"git clone {repository} kdiff-differential",
        "cd kdiff-differential",
        "python3 -m venv .venv",
        "pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu",
        install,
        "kdiff-differential --out result.png",
        test,
    )
    positions = [quick_start.index(command) for command in steps]
    assert positions == sorted(positions)


def refusal(sampler: str, steps: int, denoise: str, clock: str) -> str:
    """Why the command line refuses these settings ('' where it must run them): the step
    clock with a sampler that runs a sigma range without steps, and a partial denoise
    whose one kept step (one of 1 / 0.2 = 5) is the one from the model's sigma_min to 0 (karras and
    exponential schedules end at sigma_min), which no clock but the step clock can ramp
    over. dpm_adaptive chooses its own steps and ignores --steps."""
    if clock == "step" and sampler in ("dpm_fast", "dpm_adaptive"):
        return "the step clock counts schedule steps"
    if clock != "step" and denoise == "0.2" and steps == 1 and sampler != "dpm_adaptive":
        return "give more steps or a larger denoise"
    return ""


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sampler=st.sampled_from(SAMPLERS), steps=st.integers(1, 3), denoise=st.sampled_from(["1", "0.6", "0.2"]),
    clock=st.sampled_from(CLOCKS), release=st.sampled_from(RELEASES), strength=st.sampled_from(["0", "0.5", "1"]),
    schedule=st.sampled_from(["karras", "exponential"]),
)
def test_any_combination_of_settings_runs_unless_refused_in_one_line(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    sampler: str, steps: int, denoise: str, clock: str, release: str, strength: str, schedule: str,
) -> None:
    """Every setting the parser accepts runs and writes its file, but for the stated
    refusals (:func:`refusal`), each refused in one line that says why, writing nothing."""
    monkeypatch.chdir(files)
    out = files / "out" / "any.png"
    out.unlink(missing_ok=True)
    status = main([
        "--image", "in.png", "--map", "map.png", "--sampler", sampler, "--steps", str(steps), "--denoise", denoise,
        "--clock", clock, "--release", release, "--strength", strength, "--schedule", schedule,
        "--save-masks", "--quiet", "--out", "out/any.png",
    ])
    err = capsys.readouterr().err
    why = refusal(sampler, steps, denoise, clock)
    if why:
        assert status == 2 and err.count("\n") == 1 and why in err and not out.exists(), err
    else:
        assert status == 0 and out.exists(), err


@pytest.mark.parametrize("settings", [("dpm_fast", 3, "1", "step"), ("euler", 1, "0.2", "timestep"), ("heun", 1, "0.2", "sigma")])
def test_the_stated_refusals_are_refused(files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, settings) -> None:
    sampler, steps, denoise, clock = settings
    monkeypatch.chdir(files)
    status = main(["--image", "in.png", "--sampler", sampler, "--steps", str(steps), "--denoise", denoise, "--clock", clock,
                   "--quiet", "--out", "out/refused.png"])
    assert status == 2 and refusal(*settings) in capsys.readouterr().err


@pytest.mark.parametrize("interrupt", ["ctrl-c", "kill"])
def test_an_interrupted_run_leaves_an_existing_out_intact(files: Path, interrupt: str) -> None:
    """A run interrupted while it writes --out (its bytes written, not yet on disk) leaves
    the old file as it was: after Ctrl-C (exit 130) no temporary file is left beside it;
    after a SIGKILL, which no code can clean up after, at most a hidden temporary one."""
    out = files / "out" / "result.png"
    out.write_bytes((files / "in.png").read_bytes())
    before = out.read_bytes()
    stop = "raise KeyboardInterrupt" if interrupt == "ctrl-c" else "os.kill(os.getpid(), signal.SIGKILL)"
    code = (
        "import os, signal, sys\n"
        f"def interrupted(fd):\n    {stop}\n"
        "os.fsync = interrupted\n"
        "from kdiff_differential.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code, "--image", "in.png", "--out", "out/result.png", *FAST],
                          cwd=files, capture_output=True, text=True, timeout=300)
    assert done.returncode == (130 if interrupt == "ctrl-c" else -9), done.stderr
    assert out.read_bytes() == before
    left = sorted(p.name for p in out.parent.iterdir() if p != out)
    if interrupt == "ctrl-c":
        assert left == []
    else:
        assert all(name.startswith(".result.png.") and name.endswith(".tmp") for name in left), left


def test_help_and_argument_errors_do_not_import_torch() -> None:
    """The parser answers before any heavy import: torch, k-diffusion, diffusers."""
    code = (
        "import sys\n"
        "from kdiff_differential.cli import main\n"
        "try:\n"
        "    status = main(sys.argv[1:])\n"
        "except SystemExit as done:\n"
        "    status = done.code\n"
        "heavy = [name for name in ('torch', 'k_diffusion', 'diffusers') if name in sys.modules]\n"
        "print(status, heavy)\n"
    )
    for argv in (["--help"], ["--out", "x.png", "--steps", "zero"], ["--out", "x.png", "--sampler", "euler_b"]):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True)
        assert done.stdout.strip().splitlines()[-1] in ("0 []", "2 []"), (argv, done.stdout, done.stderr)


def test_a1111_sampler_names_choose_the_sampler_and_schedule(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """'DPM++ 2M Karras' is dpmpp_2m on the karras schedule: the same bytes as the short names."""
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--sampler", "DPM++ 2M Exponential", "--quiet", "--out", "out/a1111.png", *FAST]) == 0
    assert main(["--image", "in.png", "--sampler", "dpmpp_2m", "--schedule", "exponential", "--quiet", "--out", "out/short.png", *FAST]) == 0
    assert (files / "out/a1111.png").read_bytes() == (files / "out/short.png").read_bytes()


def test_several_seeds_write_one_output_each_as_single_runs_do(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--seeds", "3,4", "--quiet", "--out", "out/many.png", *FAST]) == 0
    for seed in (3, 4):
        assert main(["--image", "in.png", "--seed", str(seed), "--quiet", "--out", f"out/one-{seed}.png", *FAST]) == 0
        assert (files / f"out/many-seed{seed}.png").read_bytes() == (files / f"out/one-{seed}.png").read_bytes()
    assert not (files / "out/many.png").exists()
    assert (files / "out/many-seed3.png").read_bytes() != (files / "out/many-seed4.png").read_bytes()


def test_the_removed_threshold_flag_is_one_line(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--threshold", "sigma", "--quiet", "--out", "out/old.png", *FAST]) == 2
    assert capsys.readouterr().err == "kdiff-differential: error: unrecognized arguments: --threshold sigma\n"


def test_a_huge_step_count_is_warned_of_in_one_line_before_it_runs(
    files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(files)
    import kdiff_differential.cli as cli

    # Stop right after the argument checks: the warning must come before any sampling.
    monkeypatch.setattr(cli, "_check_outputs", lambda *args: (_ for _ in ()).throw(KeyboardInterrupt))
    main(["--image", "in.png", "--steps", "100000", "--sampler", "heun", "--out", "out/long.png"])
    warning = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == ["kdiff-differential: warning: --steps 100000 makes 200000 model calls (5000x the default 20 steps' time); results stop improving long before 1000"]


def test_the_default_release_is_faithful(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 4 steps: below that faithful is the smooth rule (release.FAITHFUL_MIN_STEPS)."""
    monkeypatch.chdir(files)
    four = ["--steps", "4", "--quiet"]
    assert main(["--image", "in.png", "--out", "out/default.png", *four]) == 0
    assert main(["--image", "in.png", "--release", "faithful", "--out", "out/faithful.png", *four]) == 0
    assert main(["--image", "in.png", "--release", "smooth", "--out", "out/smooth.png", *four]) == 0
    assert (files / "out/default.png").read_bytes() == (files / "out/faithful.png").read_bytes()
    assert (files / "out/default.png").read_bytes() != (files / "out/smooth.png").read_bytes()


def test_version_and_a_bare_command_say_what_to_do(capsys: pytest.CaptureFixture) -> None:
    from kdiff_differential import __version__

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out == f"kdiff-differential {__version__}\n"
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--out result.png" in err and "demo" in err


def test_case_and_negative_numbers_parse_as_a_user_types_them(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--schedule Karras is karras (as --sampler 'Euler a' is euler_ancestral), and
    --grow -1e3 is a number, not a flag."""
    from kdiff_differential.cli import build_parser

    args = build_parser().parse_args(["--out", "x.png", "--schedule", "Karras", "--grow", "-1e3", "--feather", "1e1"])
    assert (args.schedule, args.grow, args.feather) == ("karras", -1000.0, 10.0)
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--schedule", "Exponential", "--out", "out/case.png", *FAST]) == 0
    assert main(["--image", "in.png", "--schedule", "exponential", "--out", "out/lower.png", *FAST]) == 0
    assert (files / "out/case.png").read_bytes() == (files / "out/lower.png").read_bytes()


def test_seed_minus_one_draws_a_seed_and_prints_it(files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--seed", "-1", "--steps", "3", "--out", "out/random.png"]) == 0
    said = re.search(r"^kdiff-differential: seed (\d+)$", capsys.readouterr().err, re.M)
    assert said is not None
    assert main(["--image", "in.png", "--seed", said.group(1), "--out", "out/again.png", *FAST]) == 0
    assert (files / "out/random.png").read_bytes() == (files / "out/again.png").read_bytes()
    assert main(["--image", "in.png", "--seed", "-2", "--out", "out/bad.png", *FAST]) == 2


def test_a_map_that_changes_nothing_is_said_and_the_input_written(files: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(files)
    assert main(["--image", "in.png", "--map", "none", "--out", "out/nothing.png", "--steps", "3"]) == 0
    assert "nothing changes, and the model is not run" in capsys.readouterr().err
    assert np.array_equal(pixels(files / "out/nothing.png"), pixels(files / "in.png"))


def test_folder_warnings_name_their_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a", "b"):
        Image.fromarray(np.full((24, 36, 3), 90, np.uint8)).save(photos / f"{name}.png")
    Image.fromarray(np.full((30, 30), 255, np.uint8)).save(tmp_path / "square.png")
    assert main(["--image", str(photos), "--map", str(tmp_path / "square.png"), "--out", str(tmp_path / "out"), *FAST]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "stretched" in line]
    assert len(warnings) == 2 and warnings[0].startswith("kdiff-differential: warning: a.png: the map is 30x30")


@pytest.mark.slow
def test_ctrl_c_after_the_files_are_written_is_not_a_failure(tmp_path: Path) -> None:
    """Once 'wrote' is printed the run has succeeded: Ctrl-C while the interpreter shuts
    down (torch takes a while) must not turn it into exit 130."""
    import signal

    run = subprocess.Popen([sys.executable, "-m", "kdiff_differential", "--out", "r.png", "--steps", "2"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.stdout.readline().startswith("wrote")
    run.send_signal(signal.SIGINT)
    assert run.wait(timeout=120) == 0, run.stderr.read()


@pytest.mark.parametrize("flags, says", [
    (["--blur", "1e9"], "--blur 1e+09: give at most the image's diagonal"),
    (["--grow=-1e9", "--feather", "1e9"], None),  # beyond the diagonal: the whole map's min, at once
    (["--grow", "-1e9"], None),
])
def test_absurd_map_sizes_answer_at_once(files: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                                         flags: list[str], says: str) -> None:
    monkeypatch.chdir(files)
    status = main(["--image", "in.png", "--map", "map.png", *flags, "--out", "out/absurd.png", *FAST])
    err = capsys.readouterr().err
    if says is None:
        assert status == 0, err
    else:
        assert status == 2 and err.count("\n") == 1 and says in err, err
