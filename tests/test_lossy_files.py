"""Lossy files: an output that cannot keep its pixels says so (WebP is written losslessly,
so it keeps them), and a map read from a lossy file (JPEG, lossy WebP, a lossy video
codec) reads its compression noise near 0 and 1 as 0 and 1, and says so. Each file is
checked against Pillow's own reading of it."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kdiff_differential.errors import LossyWarning
from kdiff_differential.files.images import LOSSLESS_FORMATS, read_map, write_image


def noise(height: int = 40, width: int = 56) -> np.ndarray:
    """Random RGB pixels: no lossy format keeps them."""
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def lossy_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(warning.message) for warning in caught if issubclass(warning.category, LossyWarning)]


def written(image: np.ndarray, path: Path) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write_image(image, str(path))
    return lossy_warnings(caught)


def test_webp_is_written_losslessly_and_reads_back_byte_exact(tmp_path: Path) -> None:
    image = noise()
    assert written(image, tmp_path / "out.webp") == []
    with Image.open(tmp_path / "out.webp") as back:
        assert np.array_equal(np.asarray(back.convert("RGB")), image)
    # A grey image (a map) too.
    grey = image[..., 0]
    write_image(grey, str(tmp_path / "grey.webp"))
    with Image.open(tmp_path / "grey.webp") as back:
        assert np.array_equal(np.asarray(back.convert("L")), grey)


def test_jpeg_warns_once_naming_the_lossless_formats_and_no_flags(tmp_path: Path) -> None:
    image = noise()
    said = written(image, tmp_path / "out.jpg")
    with Image.open(tmp_path / "out.jpg") as back:
        assert back.format == "JPEG" and not np.array_equal(np.asarray(back), image)
    assert len(said) == 1, said
    assert "out.jpg" in said[0] and "JPEG" in said[0] and "kept" in said[0]
    assert all(suffix in said[0] for suffix in (".png", ".webp", ".tif"))
    assert "--" not in said[0] and "\n" not in said[0]
    assert written(image, tmp_path / "out.png") == []


def pillow_extensions() -> list[str]:
    """One extension of each format Pillow writes."""
    from PIL import Image as PILImage

    chosen: dict[str, str] = {}
    for extension, name in sorted(PILImage.registered_extensions().items()):
        if name in PILImage.SAVE:
            chosen.setdefault(name, extension)
    return sorted(chosen.values())


@pytest.mark.parametrize("extension", pillow_extensions())
def test_every_format_warns_exactly_when_pillow_reads_back_other_pixels(tmp_path: Path, extension: str) -> None:
    """Whatever Pillow offers: the warning is given iff the file Pillow reads back is not
    the image (some formats need what is not installed here, or refuse RGB: skipped)."""
    image = noise()
    path = tmp_path / f"out{extension}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            write_image(image, str(path))
        except (OSError, ValueError) as error:  # Ghostscript, HDF5 handlers, modes a format cannot hold
            pytest.skip(f"Pillow cannot write RGB as {extension} here: {error}")
    name = Image.registered_extensions()[extension]
    try:
        with Image.open(path) as back:
            exact = back.size == (image.shape[1], image.shape[0]) and np.array_equal(np.asarray(back.convert("RGB")), image)
    except OSError as error:
        if name in LOSSLESS_FORMATS:  # EPS needs Ghostscript to be read
            pytest.skip(f"Pillow cannot read {extension} back here: {error}")
        exact = False  # PDF: Pillow writes it (RGB as JPEG inside) but reads no PDF
    assert bool(lossy_warnings(caught)) == (not exact), (extension, lossy_warnings(caught))
    assert (name in LOSSLESS_FORMATS) == exact


def disk(size: int = 128, radius: float = 30.5) -> np.ndarray:
    """A binary disk map, uint8 (size, size): 255 inside (change), 0 outside (keep)."""
    rows, cols = np.mgrid[:size, :size]
    return np.where(np.hypot(rows - 61, cols - 66) < radius, 255, 0).astype(np.uint8)


def read_with_warnings(path: Path) -> tuple[np.ndarray, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strength = read_map(str(path)).numpy()
    return strength, lossy_warnings(caught)


def snapped(levels: np.ndarray) -> np.ndarray:
    """The rule, written out: 8-bit levels within 8 of 0 or 255 are 0 or 1, others level / 255."""
    expected = levels.astype(np.float32) / 255
    expected[levels <= 8] = 0
    expected[levels >= 247] = 1
    return expected


@pytest.mark.parametrize("quality", [95, 75])
def test_a_jpeg_map_snaps_its_noise_near_0_and_1_and_warns(tmp_path: Path, quality: int) -> None:
    change = disk()
    Image.fromarray(change).save(tmp_path / "map.jpg", quality=quality)
    with Image.open(tmp_path / "map.jpg") as image:
        levels = np.asarray(image.convert("L"))
    outside = change == 0
    assert (levels[outside] > 0).sum() > 300  # the ripples are there in the file
    strength, said = read_with_warnings(tmp_path / "map.jpg")
    assert np.array_equal(strength, snapped(levels))
    if quality == 95:
        # At quality 95 the ripples stay within the snap: the map is the disk again.
        assert np.array_equal(strength, change / 255)
    else:
        assert (strength[outside] > 0).sum() < (levels[outside] > 0).sum() / 2
    assert len(said) == 1 and "JPEG" in said[0] and ".png" in said[0] and "--" not in said[0], said


def test_a_jpeg_opened_by_pillow_and_given_as_a_map_is_snapped_as_its_file_is(tmp_path: Path) -> None:
    from kdiff_differential.maps.latent import latent_map

    Image.fromarray(disk()).save(tmp_path / "map.jpg")
    with Image.open(tmp_path / "map.jpg") as image:
        levels = np.asarray(image.convert("L"))
        strength = latent_map(image, (1, 4, *levels.shape))[0, 0].numpy()
    assert np.array_equal(strength, snapped(levels))
    # The same pixels, not opened from a JPEG, are read as they are.
    assert np.array_equal(latent_map(Image.fromarray(levels), (1, 4, *levels.shape))[0, 0].numpy(), levels / np.float32(255))


def test_a_lossless_map_is_read_exactly_and_without_a_word(tmp_path: Path) -> None:
    levels = np.tile(np.arange(256, dtype=np.uint8), (4, 1))  # every level, 1 and 254 included
    for name, options in (("map.png", {}), ("map.webp", {"lossless": True})):
        Image.fromarray(levels).save(tmp_path / name, **options)
        strength, said = read_with_warnings(tmp_path / name)
        assert said == [] and np.array_equal(strength, levels.astype(np.float32) / 255), name


def test_a_lossy_webp_map_is_told_from_a_lossless_one_and_snapped(tmp_path: Path) -> None:
    Image.fromarray(disk()).save(tmp_path / "map.webp", quality=80)  # Pillow's WebP default: lossy
    with Image.open(tmp_path / "map.webp") as image:
        levels = np.asarray(image.convert("L"))
    strength, said = read_with_warnings(tmp_path / "map.webp")
    assert np.array_equal(strength, snapped(levels))
    assert len(said) == 1 and "lossy WebP" in said[0], said
    # With alpha, the file's first chunk is VP8X, then ALPH: the kind is in the bitstream chunk after them.
    alpha = np.full((128, 128), 255, np.uint8)
    alpha[:, :8] = 0  # a transparent strip, so that the file holds alpha
    grey_alpha = Image.fromarray(np.stack([disk(), alpha], -1), "LA").convert("RGBA")
    for options, lossy in (({}, True), ({"lossless": True}, False)):
        grey_alpha.save(tmp_path / "alpha.webp", **options)
        assert (tmp_path / "alpha.webp").read_bytes()[12:16] == (b"VP8X" if lossy else b"VP8L")
        assert bool(read_with_warnings(tmp_path / "alpha.webp")[1]) == lossy


def test_lossy_video_codecs_warn_naming_mkv_and_frames_and_mkv_does_not(tmp_path: Path) -> None:
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    from kdiff_differential.files.video import VIDEO_SUFFIXES, write_video

    frames = np.stack([noise(16, 24)] * 2)
    for suffix in VIDEO_SUFFIXES:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_video(tmp_path / f"clip{suffix}", frames, fps=10)
        said = lossy_warnings(caught)
        if suffix == ".mkv":
            assert said == []
        else:
            assert len(said) == 1 and ".mkv" in said[0] and "write_frames" in said[0] and "--" not in said[0], said


def test_a_lossy_map_video_snaps_as_a_lossy_map_image_does(tmp_path: Path) -> None:
    av = pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    from kdiff_differential.files.video import read_map_video, write_video

    change = disk(64, 20.5)
    frames = np.repeat(change[None, ..., None], 3, -1).repeat(3, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LossyWarning)
        write_video(tmp_path / "map.mp4", frames, fps=10)
    # What FFmpeg decodes of the file, as a grey level per pixel (read by PyAV alone).
    with av.open(str(tmp_path / "map.mp4")) as container:
        decoded = [frame.to_ndarray(format="rgb24", src_colorspace=1, src_color_range=frame.color_range)
                   for frame in container.decode(video=0)]
    levels = np.stack([np.asarray(Image.fromarray(frame).convert("L")) for frame in decoded])
    assert (levels[:, change == 0] > 0).any()  # H.264's ripples
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strength = read_map_video(tmp_path / "map.mp4").numpy()
    assert np.array_equal(strength, snapped(levels))
    said = lossy_warnings(caught)
    assert len(said) == 1 and "h264" in said[0] and ".mkv" in said[0], said
