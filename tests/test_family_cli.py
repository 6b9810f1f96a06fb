"""Each model family from the command line (and the scripts in samplers/ that take a
model folder): runs that write the image and say the family, kept pixels byte-exact in
the written file, and folders refused in one line. The families' tiny folders are
``tiny_family``'s; a test that changes a folder builds its own."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import edit_halves_on_the_command_line, pixels, run_cli, ramp_image, save_tiny_flow

from kdiff_differential.cli import main
from kdiff_differential.core.samplers import OWN_STEPS, SAMPLERS


@pytest.mark.parametrize("name", ["sd-eps", "sd-v"])
def test_the_command_line_runs_a_diffusers_directory(name: str, tiny_family, image_file: Path, tmp_path: Path) -> None:
    args = [
        "--model", str(tiny_family(name)), "--image", str(image_file), "--map", "radial", "--prompt", "a red cat",
        "--negative", "blurry", "--cfg", "5", "--sampler", "dpmpp_2m", "--steps", "2", "--quiet",
    ]
    done = run_cli(*args, "--out", "a.png", "--save-strip", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pixels(tmp_path / "a.png").shape == (31, 37, 3)
    assert (tmp_path / "a-strip.png").is_file()


@pytest.mark.parametrize("name", ["sd-eps", "sd-v"])
def test_kept_pixels_are_the_input_bytes_in_the_written_file(name: str, tiny_family, image_file: Path, tmp_path: Path) -> None:
    """The random VAE changes every pixel it decodes; the composite puts strength-0 pixels back."""
    keep_left = np.zeros((31, 37), np.uint8)
    keep_left[:, 18:] = 255
    Image.fromarray(keep_left).save(tmp_path / "map.png")
    common = ["--model", str(tiny_family(name)), "--image", str(image_file), "--map", "map.png", "--steps", "2", "--quiet"]
    for composite in ("difference", "mask", "none"):
        done = run_cli(*common, "--composite", composite, "--out", f"{composite}.png", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    original = pixels(image_file)
    for composite in ("difference", "mask"):
        assert np.array_equal(pixels(tmp_path / f"{composite}.png")[:, :18], original[:, :18])
    raw = pixels(tmp_path / "none.png").astype(int)
    assert np.abs(raw[:, :18] - original[:, :18]).mean() > 5  # what the VAE alone does to kept pixels


def test_a_missing_weights_file_is_one_clear_line(tiny_family, image_file: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_family("sd-eps"), broken)
    for weights in (broken / "unet").glob("diffusion_pytorch_model*"):
        weights.unlink()
    done = run_cli("--model", str(broken), "--image", str(image_file), "--out", "x.png", "--quiet", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "cannot load unet/" in done.stderr
    assert not (tmp_path / "x.png").exists()


FLOW = {"sd3": ("Stable Diffusion 3/3.5", "dpmpp_2m_sde"), "flux": ("Flux.1", "dpm_adaptive")}


@pytest.mark.parametrize("name", list(FLOW))
def test_the_command_line_runs_a_flow_folder(name: str, tiny_family, image_file: Path, tmp_path: Path) -> None:
    family, sampler = FLOW[name]
    args = [
        "--model", str(tiny_family(name)), "--image", str(image_file), "--map", "radial", "--prompt", "a red cat",
        "--negative", "blurry", "--cfg", "4", "--sampler", sampler,
    ]
    if sampler != "dpm_adaptive":  # which chooses its own steps, and says so when given them
        args += ["--steps", "3"]
    done = run_cli(*args, "--out", "a.png", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert pixels(tmp_path / "a.png").shape == (31, 37, 3)
    assert f"model: {family}, text-to-image, flow matching" in done.stderr, done.stderr
    done = run_cli(*args, "--schedule", "karras", "--out", "b.png", cwd=tmp_path)
    assert done.returncode == 2 and "--schedule model" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    done = run_cli(*args, "--clock", "sigma", "--out", "b.png", cwd=tmp_path)
    assert done.returncode == 2 and "--clock timestep or step" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "b.png").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FLOW))
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_the_command_line_runs_every_sampler(name: str, tiny_family, image_file: Path, tmp_path: Path, sampler: str, capsys) -> None:
    """Every sampler from the command line (in-process: the subprocess path is above),
    with the family's default schedule; kept pixels (the map's dark corners) exact."""
    out = tmp_path / "out.png"
    steps = [] if sampler in OWN_STEPS else ["--steps", "2"]
    argv = ["--model", str(tiny_family(name)), "--image", str(image_file), "--map", "radial", "--prompt", "a red cat",
            "--sampler", sampler, *steps, "--out", str(out), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    written, original = pixels(out), pixels(image_file)
    assert written.shape == original.shape == (31, 37, 3)
    assert np.array_equal(written[0, 0], original[0, 0])  # radial: the corners are kept


# The UNet folders: the model line the command line prints.
UNETS = {
    "sdxl-eps": "Stable Diffusion XL, text-to-image",
    "sdxl-v": "Stable Diffusion XL, text-to-image",
    "sdxl-inpaint": "Stable Diffusion XL, inpainting",
    "sd-inpaint": "Stable Diffusion 1.x/2.x, inpainting",
    "sdxl-refiner": "Stable Diffusion XL refiner, text-to-image",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(UNETS))
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "euler"])
def test_the_command_line_runs_the_folder(name: str, sampler: str, tiny_family, tmp_path: Path) -> None:
    Image.fromarray(ramp_image(24, 32)).save(tmp_path / "in.png")
    done = run_cli(
        "--model", str(tiny_family(name)), "--image", "in.png", "--map", "gradient-x", "--prompt", "a red cat",
        "--cfg", "5", "--sampler", sampler, "--steps", "2", "--out", "out.png", cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert pixels(tmp_path / "out.png").shape == (24, 32, 3)
    assert f"model: {UNETS[name]}" in done.stderr


# The newer families: the model line, and the options their run takes. FLUX.1 Fill with
# the released mask; Qwen-Image-Edit takes the input image as its reference.
NEWER = {
    "flux-fill": ("FLUX.1 Fill, inpainting, flow matching", ("--inpaint-mask", "released")),
    "zimage-turbo": ("Z-Image, text-to-image, flow matching", ()),
    "klein": ("FLUX.2 Klein, text-to-image, flow matching", ()),
    "qwen": ("Qwen-Image, text-to-image, flow matching", ("--prompt", "a red cat")),
    "qwen-edit": ("Qwen-Image-Edit, text-to-image, flow matching", ("--prompt", "a red cat")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(NEWER))
def test_the_command_line_runs_each_newer_family_and_keeps_kept_pixels_byte_exact(name: str, tiny_family, tmp_path: Path) -> None:
    line, options = NEWER[name]
    done = edit_halves_on_the_command_line(tiny_family(name), ramp_image(32, 36), tmp_path, *options)
    assert f"model: {line}" in done.stderr


def refused(folder: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> str:
    status = main(["--model", str(folder), "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()
    return err


@pytest.mark.parametrize(
    "index, says",
    [
        (None, "no model_index.json"),
        ({"_class_name": "FluxPipeline"}, "a Flux.1 folder without transformer, vae, scheduler, tokenizer, text_encoder, tokenizer_2, text_encoder_2/"),
        ({"_class_name": "StableDiffusion3Pipeline"}, "a Stable Diffusion 3/3.5 folder without transformer, vae, scheduler, tokenizer, text_encoder, tokenizer_2, text_encoder_2/"),
        ({"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None], "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]},
         "a Stable Diffusion XL refiner folder without unet, vae, scheduler, tokenizer_2, text_encoder_2/"),
        ({"_class_name": "KandinskyPipeline"}, "a KandinskyPipeline folder, which is not supported"),
        ({"_class_name": "StableDiffusionXLPipeline"}, "a Stable Diffusion XL folder without unet, vae, scheduler"),
    ],
)
def test_bad_folders_are_refused_in_one_line(index, says: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    if index is not None:
        (folder / "model_index.json").write_text(json.dumps(index))
    err = refused(folder, capsys, tmp_path)
    assert says in err
    if "not supported" in says:  # a refused kind: names every family of the registry
        from kdiff_differential.models.families import FAMILIES

        assert "supported: " in err and all(family.name in err for family in FAMILIES)


def test_a_class_outside_diffusers_and_transformers_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = save_tiny_flow(tmp_path, "flux")
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["os", "system"]
    (folder / "model_index.json").write_text(json.dumps(index))
    capsys.readouterr()  # saving's own progress bars
    err = refused(folder, capsys, tmp_path)
    assert "expected a diffusers or transformers class" in err and "transformer" in err, err


def test_without_diffusers_the_command_names_the_extra(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    block = "import sys; sys.modules['diffusers'] = None; from kdiff_differential.cli import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", block, "--model", "model", "--out", "x.png"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "pip install -e '.[diffusers]'" in done.stderr


@pytest.mark.parametrize("name", list(FLOW))
def test_the_sampler_comparison_runs_a_flow_folder_on_its_own_schedule(name: str, tiny_family, image_file: Path, tmp_path: Path) -> None:
    from samplers.compare import main as compare

    out = tmp_path / "compare"
    argv = ["--out", str(out), "--model", str(tiny_family(name)), "--image", str(image_file), "--samplers", "euler,dpmpp_2m", "--steps", "2", "--quiet"]
    assert compare(argv) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 3 and all(",nan," not in row for row in rows[1:])


def test_the_sdxl_speed_script_measures_a_tiny_unet_on_cpu() -> None:
    from samplers.sdxl_speed import measure

    result = measure("cpu", size=32, steps=2, rounds=1, tiny=True)
    assert result["unet"] == "tiny" and result["s_per_step_bare"] > 0 and result["s_per_step_wrapped"] > 0
    assert result["ratio"] == result["s_per_step_wrapped"] / result["s_per_step_bare"]
