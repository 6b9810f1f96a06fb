"""The command line on video clips, with the built-in model: a clip in (a file of a video
suffix), as many frames out, kept pixels the input's bytes in every frame (in the PNG
frames of --save-frames and in the lossless .mkv), still and moving maps, and the errors
of a clip's run as one line with exit status 2."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import pixels, run_cli
from kdiff_differential.files.video import read_video, write_video

HEIGHT, WIDTH = 32, 40
STEPS = ("--steps", "3", "--sampler", "euler", "--crop", "off", "--quiet")


def frames_of(count: int) -> np.ndarray:
    """A small clip: a smooth picture sliding right a pixel a frame, uint8 (count, H, W, 3)."""
    ys, xs = np.mgrid[0:HEIGHT, 0 : WIDTH + count]
    wide = np.stack([xs * 5, ys * 7, (xs + ys) * 3], axis=2).clip(0, 255).astype(np.uint8)
    return np.stack([wide[:, t : t + WIDTH] for t in range(count)])


def moving_map(count: int) -> np.ndarray:
    """uint8 (count, H, W, 3): a white square moving right 2 pixels a frame, on black."""
    maps = np.zeros((count, HEIGHT, WIDTH, 3), np.uint8)
    for t in range(count):
        maps[t, 8:24, 2 + 2 * t : 18 + 2 * t] = 255
    return maps


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for count in (9, 10):
        frames = frames_of(count)
        write_video(tmp_path / f"clip{count}.mkv", frames, 8)
        write_video(tmp_path / f"map{count}.mkv", moving_map(count), 8)
    still = np.zeros((HEIGHT, WIDTH), np.uint8)
    still[:, WIDTH // 2 :] = 255
    Image.fromarray(still).save(tmp_path / "still.png")
    return tmp_path


@pytest.mark.parametrize("count", [9, 10])
@pytest.mark.parametrize("map_file", ["still.png", "map{count}.mkv"], ids=["still-map", "moving-map"])
def test_a_clip_comes_back_with_as_many_frames_and_its_kept_pixels_exact_in_each(folder: Path, count: int, map_file: str) -> None:
    map_file = map_file.format(count=count)
    done = run_cli("--image", f"clip{count}.mkv", "--map", map_file, "--out", "out.mkv", "--save-frames", "frames", *STEPS, cwd=folder)
    assert done.returncode == 0, done.stderr
    frames_in = read_video(folder / f"clip{count}.mkv").frames
    written = read_video(folder / "out.mkv")
    saved = np.stack([pixels(folder / "frames" / f"frame_{t:05d}.png") for t in range(count)])
    assert written.frames.shape == frames_in.shape and written.fps == 8
    assert np.array_equal(written.frames, saved)  # .mkv is lossless: the file holds the frames' bytes
    assert sorted(path.name for path in (folder / "frames").iterdir()) == [f"frame_{t:05d}.png" for t in range(count)]
    maps = moving_map(count)[..., 0] if map_file.endswith(".mkv") else np.broadcast_to(pixels(folder / "still.png"), (count, HEIGHT, WIDTH))
    for t in range(count):
        kept, changed = maps[t] == 0, maps[t] == 255
        assert np.array_equal(saved[t][kept], frames_in[t][kept]), f"frame {t}"
        assert np.abs(saved[t][changed].astype(int) - frames_in[t][changed]).mean() > 10, f"frame {t}"


def test_with_no_image_and_a_video_out_the_demo_is_a_panning_clip(tmp_path: Path) -> None:
    done = run_cli("--out", "demo.mp4", "--steps", "2", "--quiet", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    clip = read_video(tmp_path / "demo.mp4")
    assert clip.frames.shape == (9, 256, 256, 3)


def test_several_seeds_write_a_clip_and_a_frame_folder_each(folder: Path) -> None:
    done = run_cli("--image", "clip9.mkv", "--map", "still.png", "--seeds", "1,2", "--out", "out.webm", "--save-frames", "frames", *STEPS, cwd=folder)
    assert done.returncode == 0, done.stderr
    for seed in (1, 2):
        assert len(read_video(folder / f"out-seed{seed}.webm").frames) == 9
        assert len(list((folder / f"frames-seed{seed}").glob("frame_*.png"))) == 9
    first, second = (pixels(folder / f"frames-seed{seed}" / "frame_00004.png") for seed in (1, 2))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("arguments, message", [
    (("--image", "clip9.mkv", "--out", "out.png"), "--out out.png: the result of a clip is a video: .mp4, .webm, .mov, .mkv, .gif"),
    (("--image", "still.png", "--out", "out.mkv"), "--out out.mkv: the result of an image is an image"),
    (("--image", "clip9.mkv", "--map", "map10.mkv", "--out", "out.mkv"), "--map map10.mkv: a map video of 10 frames for a clip of 9"),
    (("--image", "still.png", "--map", "map9.mkv", "--out", "out.png"), "--map map9.mkv: a map video is for a video clip"),
    (("--image", "still.png", "--save-frames", "frames", "--out", "out.png"), "--save-frames frames: for a video clip"),
    (("--image", "clip9.mkv", "--save-strip", "--out", "out.mkv"), "--save-strip: for images; for a clip, --save-frames DIR"),
    (("--image", "clip9.mkv", "--out", "clip9.mkv"), "--out would write clip9.mkv, over the input --image clip9.mkv"),
    (("--image", "clip9.mkv", "--inpaint-mask", "fixed", "--out", "out.mkv"), "--inpaint-mask fixed: the built-in model has no inpainting channels"),
])
def test_a_clips_bad_input_is_one_line_and_exit_status_2(folder: Path, arguments: tuple[str, ...], message: str) -> None:
    done = run_cli(*arguments, *STEPS, cwd=folder)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (folder / "out.mkv").exists() and not (folder / "out.png").exists()


def test_without_the_video_extra_a_clip_is_one_line_naming_it(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av now fails, as without the extra
    done = run_cli("--image", "clip9.mkv", "--out", "out.mkv", *STEPS, cwd=folder)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "pip install -e '.[video]'" in done.stderr, done.stderr


WAN_SIZE = (32, 48)  # pixels: multiples of the tiny Wan's VAE factor (8) times its patch (2)


@pytest.mark.parametrize("count", [9, 10])
@pytest.mark.parametrize("moving", [False, True], ids=["still-map", "moving-map"])
def test_a_tiny_random_wan_folder_edits_a_clip_on_the_command_line(tiny_family, tmp_path: Path, count: int, moving: bool) -> None:
    """The issue's check: a Wan folder through the command line, 9 and 10 frames (10 is
    padded to 13 and trimmed back), a still map and a moving one: as many frames back,
    kept pixels the input's bytes in every frame, changed pixels changed."""
    height, width = WAN_SIZE
    ys, xs = np.mgrid[0:height, 0 : width + count]
    wide = np.stack([xs * 5, ys * 7, (xs + ys) * 3], axis=2).clip(0, 255).astype(np.uint8)
    frames_in = np.stack([wide[:, t : t + width] for t in range(count)])
    write_video(tmp_path / "clip.mkv", frames_in, 16)
    maps = np.zeros((count, height, width), np.uint8)
    for t in range(count):
        left = 2 + 2 * t if moving else width // 2
        maps[t, :, left : left + 20] = 255
    if moving:
        write_video(tmp_path / "map.mkv", np.repeat(maps[..., None], 3, axis=-1), 16)
    else:
        Image.fromarray(maps[0]).save(tmp_path / "map.png")
    done = run_cli("--model", str(tiny_family("wan")), "--image", "clip.mkv", "--map", "map.mkv" if moving else "map.png",
                   "--prompt", "a red cat", "--steps", "2", "--out", "out.mkv", "--save-frames", "frames", "--crop", "off", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert ("frames: this model takes 4k + 1 frames" in done.stderr) == (count == 10), done.stderr
    saved = np.stack([pixels(tmp_path / "frames" / f"frame_{t:05d}.png") for t in range(count)])
    assert np.array_equal(read_video(tmp_path / "out.mkv").frames, saved)
    for t in range(count):
        kept, changed = maps[t] == 0, maps[t] == 255
        assert np.array_equal(saved[t][kept], frames_in[t][kept]), f"frame {t}"
        assert np.abs(saved[t][changed].astype(int) - frames_in[t][changed]).mean() > 5, f"frame {t}"


def test_cfg_2_guides_the_second_expert_and_is_refused_by_a_model_of_one(tiny_family, tmp_path: Path) -> None:
    height, width = WAN_SIZE
    write_video(tmp_path / "clip.mkv", np.full((5, height, width, 3), 90, np.uint8), 16)
    common = ("--image", "clip.mkv", "--map", "full", "--prompt", "a red cat", "--negative", "blurry", "--steps", "4", "--cfg", "3", "--quiet")
    runs = {}
    for name, extra in (("plain", ()), ("cfg-2", ("--cfg-2", "1")), ("same", ("--cfg-2", "3"))):
        done = run_cli("--model", str(tiny_family("wan-a14b")), *common, *extra, "--out", f"{name}.mkv", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        runs[name] = read_video(tmp_path / f"{name}.mkv").frames
    assert np.array_equal(runs["same"], runs["plain"])  # cfg_2 defaults to cfg
    assert not np.array_equal(runs["cfg-2"], runs["plain"])
    done = run_cli("--model", str(tiny_family("wan")), *common, "--cfg-2", "1", "--out", "one.mkv", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--cfg-2 1" in done.stderr and "one network" in done.stderr, done.stderr


def test_a_gif_is_a_clip_when_the_result_is_a_video_and_an_image_otherwise(folder: Path) -> None:
    frames = frames_of(5)
    Image.fromarray(frames[0]).save(folder / "in.gif", save_all=True, append_images=[Image.fromarray(f) for f in frames[1:]], duration=100)
    done = run_cli("--image", "in.gif", "--map", "still.png", "--out", "clip.mkv", *STEPS, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert len(read_video(folder / "clip.mkv").frames) == 5
    done = run_cli("--image", "in.gif", "--map", "still.png", "--out", "still.png.gif", *STEPS, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert len(read_video(folder / "still.png.gif").frames) == 5  # GIF to GIF: the clip
    done = run_cli("--image", "in.gif", "--map", "still.png", "--out", "first.png", *STEPS, cwd=folder)
    assert done.returncode == 0, done.stderr
    assert pixels(folder / "first.png").shape == (HEIGHT, WIDTH, 3)  # an image: the first frame, edited
    done = run_cli("--image", "first.png", "--map", "still.png", "--out", "image.gif", *STEPS, cwd=folder)
    assert done.returncode == 0, done.stderr  # an image's result may be a GIF image
