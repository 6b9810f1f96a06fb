"""Video files: every suffix keeps the frame count, size and rate through a write and a
read (.mkv and PNG frames to the byte); writes are atomic; bad input is one clear
error; without PyAV the one line names the extra to install."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from kdiff_differential.files import video as video_files
from kdiff_differential.errors import InputError
from kdiff_differential.files.images import read_map
from kdiff_differential.maps.reading import image_strength
from kdiff_differential.files.video import (VIDEO_SUFFIXES, Clip, is_video, read_map_video, read_video,
                                            require_video, write_frames, write_video)

av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")

# The largest and mean absolute differences (8-bit levels) measured on moving_gradient
# (10 frames, 48x64 and 47x63, PyAV 18.1): mp4 14 / 1.8, webm 9 / 1.8, mov 1 / 0.02,
# gif 68 / 7.8 (256 colours, dithered); the bounds leave room for other FFmpeg builds.
TOLERANCE = {".mp4": (24, 3.0), ".webm": (20, 3.0), ".mov": (3, 0.1), ".mkv": (0, 0.0), ".gif": (90, 10.0)}


def moving_gradient(frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth gradient in each channel that moves from frame to frame, uint8 (T, H, W, 3)."""
    t, y, x = np.ogrid[:frames, :height, :width]
    red = x * 204 / max(width - 1, 1) + t * 5
    green = y * 204 / max(height - 1, 1) + t * 3
    blue = (x + y) * 128 / (height + width) + t * 10
    return np.stack(np.broadcast_arrays(red, green, blue), -1).round().clip(0, 255).astype(np.uint8)


def levels(got: np.ndarray, want: np.ndarray) -> tuple[int, float]:
    difference = np.abs(got.astype(int) - want.astype(int))
    return int(difference.max()), float(difference.mean())


def test_video_files_are_known_by_their_suffix_in_any_case() -> None:
    assert all(is_video(f"clip{suffix}") and is_video(f"CLIP{suffix.upper()}") for suffix in VIDEO_SUFFIXES)
    assert not any(is_video(name) for name in ("photo.png", "photo.jpg", "clip", "clip.mp4.png", "mp4"))


@pytest.mark.parametrize("size", [(48, 64), (47, 63)], ids=["even", "odd"])
@pytest.mark.parametrize("count", [1, 9, 10])
@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_a_written_clip_reads_back_with_its_frame_count_size_rate_and_pixels(
        tmp_path: Path, suffix: str, count: int, size: tuple[int, int]) -> None:
    frames = moving_gradient(count, *size)
    path = tmp_path / f"clip{suffix}"
    write_video(path, frames, fps=25)
    clip = read_video(path)
    assert isinstance(clip, Clip)
    assert clip.frames.shape == frames.shape and clip.frames.dtype == np.uint8
    assert clip.fps == 25
    largest, mean = levels(clip.frames, frames)
    assert largest <= TOLERANCE[suffix][0] and mean <= TOLERANCE[suffix][1], (largest, mean)
    assert [entry.name for entry in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize("suffix", [".mp4", ".webm", ".mov", ".mkv"])
def test_an_ntsc_rate_comes_back_exact(tmp_path: Path, suffix: str) -> None:
    write_video(tmp_path / f"clip{suffix}", moving_gradient(9), fps=30000 / 1001)
    assert read_video(tmp_path / f"clip{suffix}").fps == 30000 / 1001


@pytest.mark.parametrize("fps", [10, 25, 24])
def test_a_gif_keeps_its_rate_to_its_hundredths_of_a_second(tmp_path: Path, fps: float) -> None:
    write_video(tmp_path / "clip.gif", moving_gradient(10), fps=fps)
    got = read_video(tmp_path / "clip.gif").fps
    # 10 and 25 fps are delays of whole hundredths; 24 fps is 4.17 of them, rounded frame by frame.
    assert got == fps if 100 % fps == 0 else got == pytest.approx(fps, rel=0.03)


def test_mkv_and_png_frames_are_byte_exact_on_noise(tmp_path: Path) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (3, 17, 23, 3), dtype=np.uint8)
    write_video(tmp_path / "noise.mkv", noise, fps=8)
    np.testing.assert_array_equal(read_video(tmp_path / "noise.mkv").frames, noise)
    view = noise[::-1, :, ::2, ::-1]  # not contiguous: frames reversed, every other column, BGR
    write_video(tmp_path / "view.mkv", view, fps=8)
    np.testing.assert_array_equal(read_video(tmp_path / "view.mkv").frames, view)
    paths = write_frames(tmp_path / "frames", noise)
    assert [path.name for path in paths] == ["frame_00000.png", "frame_00001.png", "frame_00002.png"]
    for path, frame in zip(paths, noise):
        with Image.open(path) as image:
            assert image.format == "PNG"
            np.testing.assert_array_equal(np.asarray(image.convert("RGB")), frame)


def test_mp4_is_tagged_and_encoded_as_bt709(tmp_path: Path) -> None:
    """Players read the colour matrix from the stream's tag: the luma written must be BT.709's
    (Y = 16 + 219 (0.2126 R + 0.7152 G + 0.0722 B) / 255) and the tag must say so."""
    colours = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255), (200, 150, 50), (128, 128, 128)], np.uint8)
    frames = np.repeat(np.repeat(colours[:, None, None], 16, 1), 16, 2)
    write_video(tmp_path / "flat.mp4", frames, fps=5)
    with av.open(str(tmp_path / "flat.mp4")) as container:
        decoded = list(container.decode(video=0))
    assert all(frame.colorspace == 1 and frame.color_range == 1 for frame in decoded)  # AVCOL_SPC_BT709, MPEG range
    luma = np.array([frame.to_ndarray()[:16].mean() for frame in decoded])  # the Y plane of yuv420p
    expected = 16 + 219 * (colours.astype(float) @ [0.2126, 0.7152, 0.0722]) / 255
    np.testing.assert_allclose(luma, expected, atol=1.5)


@pytest.mark.parametrize("matrix, full_range", [(5, True), (1, True), (5, False)],
                         ids=["bt601-full", "bt709-full", "bt601-limited"])
def test_a_clip_is_read_by_the_matrix_and_range_it_is_tagged_with(tmp_path: Path, matrix: int, full_range: bool) -> None:
    """Cameras write full-range BT.601 or BT.709; each must come back as the colours written.
    (VP9's decoder gives full range as yuv420p tagged so; H.264's as yuvj420p, full by its name.)"""
    frames = moving_gradient(3, 32, 32)
    colour_range = 2 if full_range else 1  # AVCOL_RANGE_JPEG, AVCOL_RANGE_MPEG
    with av.open(str(tmp_path / "tagged.webm"), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=10, options={"crf": "4", "b": "0"})
        stream.width, stream.height, stream.pix_fmt = 32, 32, "yuv420p"
        stream.codec_context.colorspace, stream.codec_context.color_range = matrix, colour_range
        for pixels in frames:
            picture = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            container.mux(stream.encode(picture.reformat(format="yuv420p", dst_colorspace=matrix,
                                                         dst_color_range=colour_range)))
        container.mux(stream.encode(None))
    # Measured 2.05; a wrong range reads 8, a wrong matrix 5.9.
    assert levels(read_video(tmp_path / "tagged.webm").frames, frames)[1] < 3.0


def test_a_write_that_fails_half_way_leaves_the_old_file_and_no_temporary_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"the old clip")
    real = video_files._yuv_frames

    def one_frame_then_fail(*arguments):
        frames = real(*arguments)
        yield next(frames)
        raise OSError("disk full")

    monkeypatch.setattr(video_files, "_yuv_frames", one_frame_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_video(path, moving_gradient(4), fps=10)
    assert path.read_bytes() == b"the old clip"
    assert [entry.name for entry in tmp_path.iterdir()] == ["clip.mp4"]


@pytest.mark.parametrize("frames, error, words", [
    (moving_gradient(2).astype(np.float32), TypeError, "frames must be a uint8"),
    (moving_gradient(2).tolist(), TypeError, "frames must be a uint8"),
    (moving_gradient(2)[0], ValueError, r"frames must be \(T, H, W, 3\) RGB, got shape \(48, 64, 3\)"),
    (np.zeros((2, 8, 8, 4), np.uint8), ValueError, r"got shape \(2, 8, 8, 4\)"),
    (np.zeros((0, 8, 8, 3), np.uint8), ValueError, "at least one frame"),
    (np.zeros((2, 0, 8, 3), np.uint8), ValueError, "at least one frame"),
], ids=["float", "list", "one-frame", "rgba", "no-frames", "no-rows"])
def test_bad_frames_are_refused_naming_frames(tmp_path: Path, frames, error, words) -> None:
    with pytest.raises(error, match=words):
        write_video(tmp_path / "clip.mp4", frames, fps=10)
    with pytest.raises(error, match=words):
        write_frames(tmp_path / "frames", frames)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fps, error, words", [
    (0, ValueError, "fps must be a finite number above 0, got 0"),
    (-24, ValueError, "got -24"),
    (float("nan"), ValueError, "got nan"),
    (float("inf"), ValueError, "got inf"),
    ("24", TypeError, "fps must be a number of frames per second, got str"),
    (True, TypeError, "got bool"),
])
def test_bad_rates_are_refused_naming_fps(tmp_path: Path, fps, error, words) -> None:
    with pytest.raises(error, match=words):
        write_video(tmp_path / "clip.webm", moving_gradient(2), fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_a_gif_faster_than_its_players_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fps of a GIF must be at most 50"):
        write_video(tmp_path / "clip.gif", moving_gradient(2), fps=60)
    write_video(tmp_path / "clip.mp4", moving_gradient(2), fps=60)  # other containers take it


@pytest.mark.parametrize("name", ["clip.avi", "clip", "clip.png"])
def test_an_unknown_suffix_names_the_supported_ones(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match=r"path must end in one of \.mp4, \.webm, \.mov, \.mkv, \.gif"):
        write_video(tmp_path / name, moving_gradient(2), fps=10)
    assert list(tmp_path.iterdir()) == []


def test_a_gif_made_by_pillow_reads_as_pillow_reads_it(tmp_path: Path) -> None:
    pictures = []
    for index in range(4):
        pixels = np.zeros((20, 30, 3), np.uint8)
        pixels[..., 0] = index * 60
        pixels[5:10, index * 5:index * 5 + 8] = (0, 200, 50)
        pictures.append(Image.fromarray(pixels))
    path = tmp_path / "pillow.gif"
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=[100, 100, 200, 100], loop=0)
    clip = read_video(path)
    with Image.open(path) as image:
        expected = np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)])
    np.testing.assert_array_equal(clip.frames, expected)
    assert clip.fps == 4 / 0.5  # four frames in half a second


def transparent_gif(path: Path) -> None:
    """Three frames: index 0 transparent (its palette colour dark blue-grey), 1 red, 2 blue."""
    frames = []
    for index in range(3):
        indices = np.zeros((20, 30), np.uint8)
        indices[:, :10] = 1
        indices[5:15, 10 + index * 5:15 + index * 5] = 2
        frame = Image.fromarray(indices, "P")
        frame.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 255] + [0] * 253 * 3)
        frames.append(frame)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=80, loop=0, transparency=0, disposal=2)


def test_a_map_video_reads_as_its_frames_read_as_map_files(tmp_path: Path) -> None:
    # Opaque colour frames: each frame's strength is read_map's of the same frame as a PNG.
    frames = moving_gradient(3, 12, 16)
    write_video(tmp_path / "map.mkv", frames, fps=10)
    strengths = read_map_video(tmp_path / "map.mkv")
    assert strengths.shape == (3, 12, 16) and str(strengths.dtype) == "torch.float32"
    for index, path in enumerate(write_frames(tmp_path / "frames", frames)):
        assert (strengths[index] == read_map(str(path))).all()
    # Transparent pixels are coverage 0, as in a map image: what Pillow reads of the GIF, as a map.
    transparent_gif(tmp_path / "map.gif")
    strengths = read_map_video(tmp_path / "map.gif")
    with Image.open(tmp_path / "map.gif") as image:
        expected = [image_strength(frame.convert("RGBA")) for frame in ImageSequence.Iterator(image)]
    assert len(strengths) == 3 and all((got == want).all() for got, want in zip(strengths, expected))
    assert (strengths[:, :, 25:] == 0).all() and (strengths[:, :, :10] > 0).all()


def test_a_webm_maps_alpha_is_read(tmp_path: Path) -> None:
    """FFmpeg's own VP9 decoder drops a WebM's alpha: a map's transparent half must still read 0."""
    white = np.full((2, 16, 24, 4), 255, np.uint8)
    white[:, :, 12:, 3] = 0
    with av.open(str(tmp_path / "map.webm"), "w") as container:
        stream = container.add_stream("libvpx-vp9", rate=10, options={"lossless": "1"})
        stream.width, stream.height, stream.pix_fmt = 24, 16, "yuva420p"
        for pixels in white:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgba")))
        container.mux(stream.encode(None))
    strengths = read_map_video(tmp_path / "map.webm")
    assert strengths.shape == (2, 16, 24)
    assert (strengths[:, :, :11] > 0.99).all() and (strengths[:, :, 13:] < 0.01).all()
    assert read_video(tmp_path / "map.webm").frames.shape == (2, 16, 24, 3)


@pytest.mark.parametrize("contents, words", [
    (None, "no such file"),
    (b"not a video at all\n" * 20, "not a video file that FFmpeg can read"),
], ids=["missing", "text"])
def test_a_path_that_is_no_video_is_one_line_naming_it(tmp_path: Path, contents, words: str) -> None:
    path = tmp_path / "clip.mp4"
    if contents is not None:
        path.write_bytes(contents)
    for read in (read_video, read_map_video):
        with pytest.raises(InputError, match=words) as raised:
            read(path)
        assert str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_a_truncated_video_is_an_input_error(tmp_path: Path) -> None:
    write_video(tmp_path / "whole.mp4", moving_gradient(5), fps=10)
    (tmp_path / "cut.mp4").write_bytes((tmp_path / "whole.mp4").read_bytes()[:200])
    with pytest.raises(InputError, match="cut.mp4"):
        read_video(tmp_path / "cut.mp4")


def test_a_file_without_video_or_frames_is_an_input_error(tmp_path: Path) -> None:
    with av.open(str(tmp_path / "sound.wav"), "w") as container:
        stream = container.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        frame.sample_rate = 8000
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(InputError, match="sound.wav: holds no video stream"):
        read_video(tmp_path / "sound.wav")
    # Every packet of a clip overwritten: the stream is there, but no frame decodes from it.
    write_video(tmp_path / "blank.mkv", moving_gradient(3, 8, 8), fps=10)
    contents = bytearray((tmp_path / "blank.mkv").read_bytes())
    with av.open(str(tmp_path / "blank.mkv")) as container:
        for packet in filter(lambda packet: packet.size, container.demux(video=0)):  # not the end marker
            contents[packet.pos:packet.pos + packet.size] = b"\xff" * packet.size
    (tmp_path / "blank.mkv").write_bytes(contents)
    with pytest.raises(InputError, match="blank.mkv: holds no frames"):
        read_video(tmp_path / "blank.mkv")
    contents[:64] = b"\0" * 64  # and its header gone: no longer a file FFmpeg knows
    (tmp_path / "blank.mkv").write_bytes(contents)
    with pytest.raises(InputError, match="blank.mkv: not a video file that FFmpeg can read"):
        read_video(tmp_path / "blank.mkv")


def test_frames_that_change_size_are_an_input_error(tmp_path: Path) -> None:
    """PNG packets carry their own size: a third frame of another size, muxed into the stream."""
    with av.open(str(tmp_path / "sizes.mov"), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "rgb24"
        for index, (height, width) in enumerate([(16, 16), (16, 16), (20, 24)]):
            encoder = av.CodecContext.create("png", "w")
            encoder.width, encoder.height, encoder.pix_fmt, encoder.time_base = width, height, "rgb24", Fraction(1, 10)
            for packet in encoder.encode(av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8))):
                packet.stream, packet.pts, packet.dts, packet.time_base = stream, index, index, Fraction(1, 10)
                container.mux(packet)
    with pytest.raises(InputError, match=r"sizes.mov: its frames change size at frame 2 \(16x16 to 24x20\)"):
        read_video(tmp_path / "sizes.mov")


def test_a_phone_clip_is_read_upright(tmp_path: Path) -> None:
    frames = moving_gradient(2, 16, 32)
    with av.open(str(tmp_path / "phone.mp4"), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = 32, 16, "yuv444p"
        if not hasattr(stream, "set_display_rotation"):
            pytest.skip("writing a display matrix needs PyAV 18")
        stream.set_display_rotation(90)  # turn the picture 90 degrees counter-clockwise to show it
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode(None))
    clip = read_video(tmp_path / "phone.mp4")
    assert clip.frames.shape == (2, 32, 16, 3)
    assert levels(clip.frames, np.rot90(frames, 1, axes=(1, 2)))[1] < 3


def test_frames_replace_their_own_names_and_refuse_a_longer_runs(tmp_path: Path) -> None:
    folder = tmp_path / "made" / "frames"
    write_frames(folder, moving_gradient(3), stem="out")
    (folder / "notes.txt").write_text("mine")
    paths = write_frames(folder, moving_gradient(3)[::-1], stem="out")  # the same names: replaced
    with Image.open(paths[0]) as image:
        np.testing.assert_array_equal(np.asarray(image), moving_gradient(3)[2])
    before = {entry.name: entry.read_bytes() for entry in folder.iterdir()}
    with pytest.raises(InputError, match=r"already holds out_00002.png from a longer run, which these 2 frames"):
        write_frames(folder, moving_gradient(2), stem="out")
    assert {entry.name: entry.read_bytes() for entry in folder.iterdir()} == before  # nothing written
    write_frames(folder, moving_gradient(2), stem="other")  # another stem is another sequence
    assert sorted(entry.name for entry in folder.iterdir()) == [
        "notes.txt", "other_00000.png", "other_00001.png", "out_00000.png", "out_00001.png", "out_00002.png"]
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="is a file"):
        write_frames(tmp_path / "file", moving_gradient(1))
    with pytest.raises(ValueError, match="stem must be a file name"):
        write_frames(folder, moving_gradient(1), stem="a/b")


def test_frame_names_widen_past_five_digits() -> None:
    assert video_files._frame_names(100001, "frame")[-1] == "frame_100000.png"
    assert video_files._frame_names(12, "frame")[-1] == "frame_00011.png"


def test_without_pyav_video_functions_name_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "av", None)  # import av now raises ImportError
    message = "video files need PyAV: pip install -e '.[video]'"
    for call in (require_video, lambda: read_video(tmp_path / "x.mp4"), lambda: read_map_video(tmp_path / "x.mp4"),
                 lambda: write_video(tmp_path / "x.mp4", moving_gradient(1), 10)):
        with pytest.raises(InputError) as raised:
            call()
        assert str(raised.value) == message
    # Telling a video by its name and writing PNG frames need no PyAV.
    assert is_video("x.mp4")
    write_frames(tmp_path / "frames", moving_gradient(1))


def test_importing_the_module_loads_neither_pyav_nor_torch() -> None:
    code = "import sys, kdiff_differential.files.video; print([m for m in ('av', 'torch') if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
