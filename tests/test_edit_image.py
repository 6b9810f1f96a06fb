"""edit_image, the whole edit as one library call: the command line's pixels, its settings
checked up front by name, a model loaded once and reused, and the edge cases of a map."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import pixels, ramp_image, save_tiny_sd
from kdiff_differential import EditSettings, edit_image
from kdiff_differential.cli import as_flags, main
from kdiff_differential.errors import EditWarning
from kdiff_differential.models import find_model
from kdiff_differential.models.builtin import Builtin, load_example_image

PACKAGE = Path(__file__).resolve().parents[1] / "kdiff_differential"


def disk(height: int, width: int, centre: tuple[int, int], radius: float) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return ((ys - centre[0]) ** 2 + (xs - centre[1]) ** 2 <= radius**2).astype(np.float32)


@pytest.fixture(scope="module")
def photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 320x240 photo and a small disk to change in it, so that crop auto cuts a box."""
    folder = tmp_path_factory.mktemp("edit-image")
    image = np.asarray(Image.fromarray(load_example_image()).resize((320, 240), Image.BICUBIC))
    Image.fromarray(image).save(folder / "in.png")
    Image.fromarray((disk(240, 320, (120, 200), 24) * 255).astype(np.uint8)).save(folder / "map.png")
    return folder


def test_the_same_settings_give_the_command_lines_pixels_on_the_builtin_model(photo: Path) -> None:
    flags = ["--grow", "4", "--feather", "10", "--fill", "noise", "--color-match", "--crop", "auto", "--crop-padding", "0.5",
             "--sampler", "euler", "--steps", "4", "--seed", "7"]
    assert main(["--image", str(photo / "in.png"), "--map", str(photo / "map.png"), "--out", str(photo / "cli.png"), "--quiet", *flags]) == 0
    image = pixels(photo / "in.png")
    done = edit_image("builtin", image, str(photo / "map.png"), EditSettings(grow=4, feather=10, fill="noise", color_match=True, crop="auto", crop_padding=0.5, sampler="euler", steps=4), seed=7)
    assert done.region.cropped  # the crop and its paste-back are part of what is compared
    assert np.array_equal(done.image, pixels(photo / "cli.png"))
    outside = np.asarray(done.change_map) == 0
    assert np.array_equal(done.image[outside], image[outside])
    assert np.abs(done.image.astype(int) - image).max() > 20


def test_edit_image_is_the_stages_composed_by_hand(photo: Path) -> None:
    """The whole edit written out here from its stages (map, crop, fill, model, sampler,
    decode, colour match, composite, paste), independently of the library's own path."""
    from kdiff_differential import composite, differential_edit, fill_pixels, match_colors, plan_crop, shape_map
    from kdiff_differential.files.images import read_map

    image = pixels(photo / "in.png")
    strength = shape_map(read_map(str(photo / "map.png")), grow=4, feather=10)
    region = plan_crop(strength, "auto", 0.5)
    rows, columns = slice(region.top, region.top + region.height), slice(region.left, region.left + region.width)
    box, box_map = image[rows, columns], strength[rows, columns]
    fitted = Builtin().fit(fill_pixels(box, box_map, "noise", seed=7))  # the built-in model runs a box at its own size
    run = differential_edit(fitted.denoiser, fitted.latent, box_map, sampler="euler", steps=4, seed=7)
    decoded = match_colors(fitted.decode(run.result), box, box_map)
    expected = image.copy()
    expected[rows, columns] = composite(box, decoded, box_map, "difference")

    settings = EditSettings(grow=4, feather=10, fill="noise", color_match=True, crop_padding=0.5, sampler="euler", steps=4)
    done = edit_image("builtin", image, str(photo / "map.png"), settings, seed=7)
    assert region.cropped and done.region == region
    assert np.array_equal(done.change_map, strength)
    assert np.array_equal(done.image, expected)


def test_the_feathered_ring_changes_less_from_inside_out(photo: Path) -> None:
    """feather=12 widens the disk with a soft edge: the ring next to it changes, the
    change falls ring by ring outward, and nothing changes past the feather."""
    image = pixels(photo / "in.png")
    disk_map = disk(240, 320, (120, 200), 24)
    done = edit_image("builtin", image, disk_map, EditSettings(feather=12, sampler="euler", steps=8, crop="off"), seed=0)
    distance = np.hypot(*(np.mgrid[:240, :320] - np.array([120, 200])[:, None, None])) - 24
    change = np.abs(done.image.astype(int) - image).mean(axis=-1)
    rings = [change[(distance > low) & (distance <= low + 4)].mean() for low in (0, 4, 8)]
    assert rings[0] > 2 and rings[0] > rings[1] > rings[2], rings
    assert change[distance > 12 + 1].max() == 0
    # Without the feather, the ring next to the disk is kept.
    plain = edit_image("builtin", image, disk_map, EditSettings(sampler="euler", steps=8, crop="off"), seed=0)
    assert np.abs(plain.image.astype(int) - image).mean(axis=-1)[distance > 1].max() == 0


def test_the_same_settings_give_the_command_lines_pixels_on_a_diffusers_folder(tmp_path: Path) -> None:
    model = save_tiny_sd(tmp_path, "epsilon")
    image = ramp_image(32, 40)
    Image.fromarray(image).save(tmp_path / "in.png")
    flags = ["--prompt", "a cat", "--negative", "a dog", "--cfg", "3", "--steps", "2", "--sampler", "dpmpp_2m", "--map", "gradient-y"]
    assert main(["--model", str(model), "--image", str(tmp_path / "in.png"), "--out", str(tmp_path / "cli.png"), "--quiet", *flags]) == 0
    done = edit_image(str(model), image, "gradient-y", EditSettings(prompt="a cat", negative="a dog", cfg=3, steps=2, sampler="dpmpp_2m"), device="cpu")
    assert np.array_equal(done.image, pixels(tmp_path / "cli.png"))
    assert not np.array_equal(done.image, image)


def test_edit_image_is_the_readme_recipe_put_together() -> None:
    """With nothing around the model call, the result is load_model, differential_edit
    and composite, as docs/python.md's lower-level example runs them."""
    from kdiff_differential import composite, differential_edit, load_model

    image = load_example_image()[::2, ::2]
    change = np.tile(np.linspace(0, 1, image.shape[1], dtype=np.float32), (image.shape[0], 1))
    model = load_model("builtin", image)
    edit = differential_edit(model.denoiser, model.latent, change, sampler="dpmpp_2m", steps=6, seed=3)
    expected = composite(image, model.decode(edit.result), change)
    done = edit_image("builtin", image, change, EditSettings(steps=6), seed=3)
    assert np.array_equal(done.image, expected)


def test_a_model_loaded_once_gives_what_its_name_gives() -> None:
    from kdiff_differential import open_model

    image = ramp_image(40, 48)
    model = open_model("builtin")
    once = [edit_image(model, image, "radial", EditSettings(steps=3), seed=seed).image for seed in (0, 1)]
    assert np.array_equal(once[0], edit_image("builtin", image, "radial", EditSettings(steps=3), seed=0).image)
    assert not np.array_equal(once[0], once[1])


def test_a_keep_map_is_the_flipped_change_map() -> None:
    image = ramp_image(40, 48)
    change = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (40, 1))
    flipped = edit_image("builtin", image, 1 - change, EditSettings(keep_map=True, steps=3))
    assert np.array_equal(flipped.image, edit_image("builtin", image, change, EditSettings(steps=3)).image)
    np.testing.assert_allclose(flipped.change_map, change, atol=1e-6)


@pytest.mark.parametrize(
    "settings, error, says",
    [
        ({"grow": float("nan")}, TypeError, "grow=nan"),
        ({"feather": -1}, ValueError, "feather=-1"),
        ({"crop_padding": -0.5}, ValueError, "crop_padding=-0.5"),
        ({"fill": "paint"}, ValueError, "fill='paint'"),
        ({"sampler": "euler_b"}, ValueError, "sampler='euler_b'"),
        ({"sampler": "DPM++ 2M Karras", "schedule": "exponential"}, ValueError, "schedule=exponential"),
        ({"steps": 0}, ValueError, "steps=0"),
        ({"steps": 2.5}, TypeError, "steps=2.5"),
        ({"denoise": 0}, ValueError, "denoise=0"),
        ({"strength": 1.5}, ValueError, "strength=1.5"),
        ({"clock": "step", "sampler": "dpm_fast"}, ValueError, "clock=step"),
        ({"map_prompt": "the sky"}, ValueError, "segmenter="),
        ({"color_match": "yes"}, TypeError, "color_match='yes'"),
        ({"inpaint_mask": "fixed"}, ValueError, "inpaint_mask=fixed"),
        ({"colour_match": True}, TypeError, "colour_match"),
    ],
)
def test_bad_settings_are_refused_before_any_work_naming_the_keyword(monkeypatch: pytest.MonkeyPatch, settings: dict,
                                                                      error: type, says: str) -> None:
    monkeypatch.setattr(Builtin, "fit", lambda *args: pytest.fail("the model ran"))
    with pytest.raises(error, match=None) as raised:
        edit_image("builtin", ramp_image(16, 16), "full", EditSettings(**settings))
    assert says in str(raised.value)


@pytest.mark.parametrize(
    "call, error, says",
    [
        (lambda image: edit_image("builtin", image, "full", seed=-3), ValueError, "seed=-3"),
        (lambda image: edit_image("builtin", image, "full", seed=2**64), ValueError, "seed=18446744073709551616: out of range"),
        (lambda image: edit_image("builtin", image, "full", seed=1.5), TypeError, "seed=1.5"),
        (lambda image: edit_image("builtin", image, "full", {"steps": 2}), TypeError, "give an EditSettings"),
        (lambda image: edit_image(find_model("builtin", loras=[("missing.safetensors", 1.0)]), image), ValueError,
         "loras=: for a diffusers model"),
    ],
)
def test_a_bad_seed_settings_or_model_option_is_refused_before_any_work(monkeypatch: pytest.MonkeyPatch, call, error: type,
                                                                         says: str) -> None:
    monkeypatch.setattr(Builtin, "fit", lambda *args: pytest.fail("the model ran"))
    with pytest.raises(error) as raised:
        call(ramp_image(16, 16))
    assert says in str(raised.value)


def test_a_map_that_changes_nothing_skips_the_model_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Builtin, "fit", lambda *args: pytest.fail("the model ran"))
    image = ramp_image(24, 24)
    grown_away = np.zeros((24, 24), np.float32)
    grown_away[10, 10] = 1
    for change_map, settings in (("none", {}), (grown_away, {"grow": -2})):
        with pytest.warns(EditWarning, match="nothing changes"):
            done = edit_image("builtin", image, change_map, EditSettings(**settings))
        assert np.array_equal(done.image, image) and done.run is None


def test_an_image_read_only_from_pillow_gives_no_warning(photo: Path) -> None:
    """np.asarray of a PIL image is read-only, the usual way to read one; torch would warn
    at every tensor made from it."""
    from kdiff_differential import quiet_warnings

    with quiet_warnings():
        import k_diffusion  # noqa: F401  (its own import warnings are not ours)
    with Image.open(photo / "in.png") as opened:
        image = np.asarray(opened)
    assert not image.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        done = edit_image("builtin", image, str(photo / "map.png"), EditSettings(steps=2, crop="off"))
    assert not np.array_equal(done.image, image)


def test_seed_none_draws_a_seed_and_says_which() -> None:
    image = ramp_image(24, 32)
    drawn = edit_image("builtin", image, "full", EditSettings(steps=2), seed=None)
    assert isinstance(drawn.seed, int)
    assert np.array_equal(drawn.image, edit_image("builtin", image, "full", EditSettings(steps=2), seed=drawn.seed).image)


def test_no_library_module_names_a_flag_in_an_error_or_warning() -> None:
    """Only the command-line layer (cli/) speaks of --flags; the library names keywords."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            called = isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("warn", "_warn", "InputError")
            if isinstance(node, ast.Raise) or called:
                for text in ast.walk(node):
                    if isinstance(text, ast.Constant) and isinstance(text.value, str) and " --" in f" {text.value}":
                        found.append(f"{path.name}:{node.lineno}: {text.value}")
    assert found == []


def test_the_command_line_speaks_of_flags_where_the_library_names_keywords() -> None:
    assert as_flags("grow=1e9: out of range") == "--grow 1e9: out of range"
    assert as_flags("map_prompt= needs segmenter=, a CLIPSeg folder") == "--map-prompt needs --segmenter, a CLIPSeg folder"
    assert as_flags("change_map=x.png: neither a file nor a preset") == "--map x.png: neither a file nor a preset"
    assert as_flags("the image=3 is not a setting: grown=2") == "the --image 3 is not a setting: grown=2"


def test_old_and_new_entry_points_agree_and_old_ones_warn_nothing() -> None:
    """load_model (fit once) is open_model(...).fit: docs/python.md's recipe keeps working."""
    from kdiff_differential import load_model, open_model, quiet_warnings

    with quiet_warnings():
        import k_diffusion  # noqa: F401  (its own import warnings are not ours)
    image = ramp_image(16, 20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fitted = load_model("builtin", image)
    torch.testing.assert_close(fitted.latent, open_model("builtin").fit(image).latent)


def test_each_public_name_comes_from_the_one_module_that_defines_it() -> None:
    """The package's names are __init__.pyi's, each its defining module's own object (no
    re-export chain), and the names a 0.1 release deprecated are gone."""
    import kdiff_differential

    stub = ast.parse((PACKAGE / "__init__.pyi").read_text())
    listed = {alias.name: node.module for node in stub.body if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert sorted(listed) == sorted(kdiff_differential.__all__)
    for name, module in listed.items():
        value = getattr(kdiff_differential, name)
        if hasattr(value, "__module__") and callable(value):
            assert value.__module__ == f"kdiff_differential.{module}", name
    for old in ("prepare_map", "prepare_change_map", "Edit", "load_options"):
        assert not hasattr(kdiff_differential, old)
    from kdiff_differential.models import flow

    assert not hasattr(flow, "start_from_noise")
