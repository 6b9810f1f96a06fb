"""Folders: --image DIR --out DIR, maps matched by name, resume, Ray."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdiff_differential.cli import main
from kdiff_differential.executors import execute

SIZES = {"a": (40, 48), "b": (32, 32), "c": (24, 56)}  # (height, width)
FAST = ["--steps", "3", "--quiet"]


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three images of different sizes and formats, a text file, and per-image maps
    (left half keep, right half change)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    maps = tmp_path / "maps"
    maps.mkdir()
    for (name, (height, width)), suffix in zip(SIZES.items(), (".png", ".jpg", ".webp")):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{name}{suffix}")
        halves = np.zeros((height, width), np.uint8)
        halves[:, width // 2 :] = 255
        Image.fromarray(halves).save(maps / f"{name}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def edit(photos: Path, out: Path, *options: str) -> int:
    return main(["--image", str(photos), "--out", str(out), *FAST, *options])


def test_three_images_give_three_outputs_of_their_sizes_and_a_text_file_is_named(photos, tmp_path, capsys):
    out = tmp_path / "out"
    assert edit(photos, out, "--map", str(tmp_path / "maps")) == 0
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "notes.txt" in error and "not images" in error
    assert sorted(path.name for path in out.iterdir()) == ["a.png", "b.png", "c.png"]
    for name, size in SIZES.items():
        with Image.open(out / f"{name}.png") as result:
            assert result.size[::-1] == size
    # Each map of its own image: the left half kept, exactly for the lossless input.
    original = np.asarray(Image.open(photos / "a.png"))
    result = np.asarray(Image.open(out / "a.png"))
    assert np.array_equal(result[:, :20], original[:, :20]) and np.abs(result[:, 28:].astype(int) - original[:, 28:]).mean() > 20


def test_a_second_run_does_not_rewrite_and_an_interrupted_batch_resumes(photos, tmp_path):
    out = tmp_path / "out"
    assert edit(photos, out) == 0
    stamps = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in out.iterdir()}
    os.remove(out / "b.png")  # as if the batch had stopped before b
    assert edit(photos, out) == 0
    assert {name: stamp for name, stamp in ((p.name, (p.stat().st_ino, p.stat().st_mtime_ns)) for p in out.iterdir())
            if name != "b.png"} == {name: stamp for name, stamp in stamps.items() if name != "b.png"}
    assert (out / "b.png").exists()


def test_one_map_file_and_a_preset_serve_every_image(photos, tmp_path):
    assert edit(photos, tmp_path / "preset", "--map", "none") == 0
    original = np.asarray(Image.open(photos / "a.png"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "preset" / "a.png")), original)
    assert edit(photos, tmp_path / "one", "--map", str(tmp_path / "maps" / "b.png")) == 0  # stretched to each
    assert len(list((tmp_path / "one").iterdir())) == 3


@pytest.mark.parametrize(
    "setup, words",
    [
        (lambda tmp: (tmp / "maps" / "c.png").unlink(), "no map for the image c.webp"),
        (lambda tmp: (tmp / "out").write_text("a file"), "is a file, and --image"),
    ],
)
def test_bad_folders_are_refused_in_one_line_before_any_run(photos, tmp_path, capsys, setup, words):
    setup(tmp_path)
    capsys.readouterr()
    assert main(["--image", str(photos), "--out", str(tmp_path / "out"), "--map", str(tmp_path / "maps"), "--steps", "3"]) == 2
    error = capsys.readouterr().err
    lines = error.splitlines()
    assert words in lines[-1] and lines[-1].startswith("kdiff-differential: error:")
    assert all("warning" in line for line in lines[:-1])  # at most the one about notes.txt
    assert not (tmp_path / "out").is_dir()


def test_an_out_that_names_an_image_file_is_refused_for_a_folder(photos, tmp_path, capsys):
    """A folder run writes a folder: --out x.png would make a folder named x.png."""
    assert edit(photos, tmp_path / "x.png") == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "names an image file" in error and "give a folder" in error
    assert not (tmp_path / "x.png").exists()


def test_an_output_folder_that_is_the_input_folder_is_refused(photos, capsys):
    assert main(["--image", str(photos), "--out", str(photos), "--steps", "3"]) == 2
    assert "over the input" in capsys.readouterr().err
    assert sorted(path.name for path in photos.iterdir()) == ["a.png", "b.jpg", "c.webp", "notes.txt"]


def test_the_local_executor_runs_every_item_with_the_shared_arguments():
    assert sorted(execute("local", pow, [1, 2, 3], shared=(2,))) == [(1, 2), (2, 4), (3, 8)]
    with pytest.raises(ValueError, match="executor must be one of"):
        execute("slurm", pow, [1])


@pytest.mark.slow
def test_ray_gives_the_same_bytes_as_local(photos, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is part of the test install")
    assert edit(photos, tmp_path / "local", "--map", str(tmp_path / "maps")) == 0
    assert edit(photos, tmp_path / "ray", "--map", str(tmp_path / "maps"), "--executor", "ray") == 0
    for name in SIZES:
        assert (tmp_path / "ray" / f"{name}.png").read_bytes() == (tmp_path / "local" / f"{name}.png").read_bytes()


def test_a_diffusers_model_loads_once_for_the_whole_folder(photos, tmp_path, monkeypatch):
    """Folder mode edits every image with one loaded pipeline: loading a model can take
    minutes, fitting it to an image (encoding it) does not."""
    import kdiff_differential.models as models
    from conftest import save_tiny_sd

    folder = save_tiny_sd(tmp_path / "sd", "epsilon")
    loads = []
    load = models.load_pipeline
    monkeypatch.setattr(models, "load_pipeline", lambda *args, **kwargs: loads.append(args) or load(*args, **kwargs))
    assert edit(photos, tmp_path / "out", "--model", str(folder), "--steps", "1") == 0
    assert sorted(p.stem for p in (tmp_path / "out").iterdir()) == sorted(SIZES)
    assert len(loads) == 1
