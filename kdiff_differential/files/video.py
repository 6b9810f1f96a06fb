"""Video files: a clip's frames and rate read from a file, and written to one in the
container and codec its suffix names (see docs/video-files.md for the choices).

Frames travel as uint8 arrays (T, H, W, 3) RGB, as images do as (H, W, 3). PyAV (the
``video`` extra, with FFmpeg inside its wheel) is imported inside the functions, so that
importing the package stays light and works without it.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import InputError, LossyWarning
from .atomic import write_atomically

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".gif")

# The rate of a file that states none (an odd stream without timestamps).
DEFAULT_FPS = 24.0

# A GIF stores each frame's delay in hundredths of a second, and players (FFmpeg's
# reader too) stretch delays under 2 to 10: faster GIFs do not play at their rate.
GIF_MAX_FPS = 50.0

# Run in the repository's folder: the package is installed from a clone, not the package index.
EXTRA = "pip install -e '.[video]'"

# Codecs that store frames exactly (or, GIF, as palette indices: no ripples): a map video
# in any other is read as lossy (see read_map_video).
LOSSLESS_CODECS = frozenset({"ffv1", "rawvideo", "png", "apng", "qtrle", "utvideo", "huffyuv", "ffvhuff", "magicyuv", "gif"})

# FFmpeg's colour-matrix tags (AVColorSpace) -> swscale's matrices (SWS_CS_*): BT.709,
# FCC, BT.601 (twice), SMPTE 240M, BT.2020; an untagged stream reads as BT.601, as
# FFmpeg reads it.
_MATRICES = {1: 1, 4: 4, 5: 5, 6: 5, 7: 7, 9: 9, 10: 9}
_BT709, _BT601, _LIMITED_RANGE = 1, 5, 1

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Clip:
    """A clip's frames, uint8 (T, H, W, 3) RGB, and its rate in frames per second."""

    frames: np.ndarray
    fps: float


def is_video(path: PathLike) -> bool:
    """Whether ``path`` names a video file by its suffix (one of :data:`VIDEO_SUFFIXES`,
    any case). It needs no PyAV, so a caller can route still images without the extra."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def require_video() -> Any:
    """The ``av`` module (PyAV), or an InputError saying which extra to install."""
    try:
        import av
    except ImportError:
        raise InputError(f"video files need PyAV: {EXTRA}") from None
    return av


def _open_input(av: Any, path: Path) -> Any:
    if not path.exists():
        raise InputError(f"{path}: no such file; give the path of an existing video")
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as error:
        raise InputError(f"{path}: not a video file that FFmpeg can read ({error.__class__.__name__}: "
                         f"{getattr(error, 'strerror', None) or error})") from None


def _packets_and_decoder(av: Any, container: Any, stream: Any) -> tuple[Any, Any]:
    """The stream's packets (the last one empty: it flushes the decoder) and their
    decoder. FFmpeg's own VP9 decoder skips a WebM's alpha; libvpx's reads it."""
    decoder = stream.codec_context
    if decoder.name == "vp9" and stream.metadata.get("alpha_mode") == "1":
        decoder = av.CodecContext.create("libvpx-vp9", "r")
    return container.demux(stream), decoder


def _pixels(frame: Any, alpha: bool) -> np.ndarray:
    """A decoded frame as uint8 (H, W, 3 or 4), by the colour matrix and range its
    stream is tagged with, turned upright as its display matrix says."""
    pixels = frame.to_ndarray(format="rgba" if alpha else "rgb24", src_colorspace=_MATRICES.get(frame.colorspace, _BT601),
                              src_color_range=frame.color_range)
    # The display matrix turns the picture counter-clockwise, as np.rot90 does.
    return np.ascontiguousarray(np.rot90(pixels, k=round(frame.rotation / 90) % 4))


def _read(path: PathLike, alpha: bool) -> tuple[list[np.ndarray], float, str]:
    """Every frame of the video at ``path`` (uint8 RGB, or RGBA when ``alpha``), its rate
    and its codec's name."""
    av = require_video()
    path = Path(path)
    with _open_input(av, path) as container:
        if not container.streams.video:
            raise InputError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        frames: list[np.ndarray] = []
        seconds = Fraction(0)
        packets, decoder = _packets_and_decoder(av, container, stream)
        try:
            for packet in packets:
                if packet.duration and packet.time_base:
                    seconds += packet.duration * packet.time_base
                frames.extend(_pixels(frame, alpha) for frame in decoder.decode(packet))
        except av.error.FFmpegError as error:
            raise InputError(f"{path}: cannot decode frame {len(frames)} ({error.__class__.__name__}: "
                             f"{error.strerror or error})") from None
        if not frames:
            raise InputError(f"{path}: holds no frames")
        changed = next((index for index, frame in enumerate(frames) if frame.shape != frames[0].shape), None)
        if changed is not None:
            raise InputError(f"{path}: its frames change size at frame {changed} ({frames[0].shape[1]}x"
                             f"{frames[0].shape[0]} to {frames[changed].shape[1]}x{frames[changed].shape[0]})")
        rate = stream.average_rate
        if stream.codec_context.name == "gif" and seconds > 0:
            # A GIF has delays, not a rate: the clip's length over its frames.
            rate = len(frames) / seconds
        fps = float(rate) if rate else DEFAULT_FPS
        codec = stream.codec_context.name
    return frames, fps if math.isfinite(fps) and fps > 0 else DEFAULT_FPS, codec


def read_video(path: PathLike) -> Clip:
    """Every frame of the video at ``path``, in order, as a :class:`Clip`: uint8 RGB,
    upright (a phone clip's rotation applied); alpha is dropped, as
    :func:`~kdiff_differential.files.images.read_image` drops it. ``fps`` is the stream's
    average rate (a GIF's: its frame count over its length; 24 when the file states
    none). InputError (one line, naming the path) for a missing file, a file FFmpeg
    cannot read or decode, no video stream or no frames."""
    frames, fps, _ = _read(path, alpha=False)
    return Clip(np.stack(frames), fps)


def read_map_video(path: PathLike) -> Any:
    """The change strengths of the map video at ``path``, float32 tensor (T, H, W) in
    [0, 1], each frame read as :func:`~kdiff_differential.files.images.read_map` reads a map
    image (:func:`~kdiff_differential.maps.reading.image_strength`: luminance; alpha as coverage
    over black, so transparent pixels are 0).

    A map video in a lossy codec (H.264, VP9, ProRes...: any but those of
    :data:`LOSSLESS_CODECS`) is read as a lossy map image is: values within
    :data:`~kdiff_differential.maps.reading.LOSSY_SNAP` (8/255) of 0 or 1 read as 0 or 1,
    and a :class:`~kdiff_differential.errors.LossyWarning` names .mkv."""
    import torch
    from PIL import Image

    from ..maps.reading import LOSSY_SNAP, image_strength

    frames, _, codec = _read(path, alpha=True)
    snap = 0.0 if codec in LOSSLESS_CODECS else LOSSY_SNAP
    # Opaque pixels read as a map file without alpha reads them (grey * 255 / 255**2 is
    # grey / 255 to the bit in float32).
    strength = torch.stack([image_strength(Image.fromarray(frame, "RGBA"), name=str(path), snap=snap) for frame in frames])
    if snap:
        warnings.warn(f"{path}: a map video in a lossy codec ({codec}) carries compression ripples around its edges; "
                      f"values within 8/255 of 0 or 1 are read as 0 or 1, but pixels near an edge may still change "
                      f"a little; write the map as .mkv (FFV1, lossless) to keep exactly what it says", LossyWarning,
                      stacklevel=2)
    return strength


@dataclass(frozen=True)
class _Format:
    container: str
    codec: str
    pixel_format: str
    options: dict
    loss: str = ""  # what the codec loses; "" when lossless


# Per suffix: what a user of photo and video editors expects there (docs/video-files.md).
_FORMATS = {
    ".mp4": _Format("mp4", "libx264", "yuv420p", {"crf": "14", "preset": "medium"}, "H.264 (CRF 14) compresses lossily"),
    ".webm": _Format("webm", "libvpx-vp9", "yuv420p",
                     {"crf": "18", "b": "0", "deadline": "good", "cpu-used": "4", "row-mt": "1"},
                     "VP9 (CRF 18) compresses lossily"),
    ".mov": _Format("mov", "prores_ks", "yuv444p10le", {"profile": "4444", "vendor": "apl0"},
                    "ProRes 4444 compresses lossily (by a level or so)"),
    ".mkv": _Format("matroska", "ffv1", "bgr0", {"level": "3", "slicecrc": "1", "g": "1"}),
    ".gif": _Format("gif", "gif", "pal8", {}, "a GIF keeps one palette of 256 colours"),
}


def _check_frames(frames: Any) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8:
        raise TypeError(f"frames must be a uint8 numpy array (T, H, W, 3), got "
                        f"{getattr(frames, 'dtype', type(frames).__name__)}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) RGB, got shape {frames.shape}")
    if 0 in frames.shape:
        raise ValueError(f"frames must hold at least one frame of at least 1x1 pixels, got shape {frames.shape}")
    return frames


def _check_fps(fps: Any, suffix: str) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.integer, np.floating)):
        raise TypeError(f"fps must be a number of frames per second, got {type(fps).__name__}")
    if not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a finite number above 0, got {fps}")
    if suffix == ".gif" and fps > GIF_MAX_FPS:
        raise ValueError(f"fps of a GIF must be at most {GIF_MAX_FPS:g} (its delays are hundredths of a second "
                         f"and players slow shorter ones down), got {fps}")
    # NTSC rates (30000/1001) come back exact; others to within a thousandth.
    return Fraction(float(fps)).limit_denominator(1001)


def _gif_frames(av: Any, frames: np.ndarray, rate: Fraction) -> Any:
    """The frames in one palette of 256 colours chosen over the whole clip (no palette
    flicker from frame to frame), dithered: FFmpeg's palettegen and paletteuse."""
    graph = av.filter.Graph()
    source = graph.add_buffer(width=frames.shape[2], height=frames.shape[1], format="rgb24", time_base=1 / rate)
    split, palette, use, sink = (graph.add(*node) for node in
                                 (("split",), ("palettegen", "stats_mode=full"), ("paletteuse",), ("buffersink",)))
    source.link_to(split)
    split.link_to(use, 0, 0)
    split.link_to(palette, 1, 0)
    palette.link_to(use, 0, 1)
    use.link_to(sink)
    graph.configure()
    for index, pixels in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        frame.pts, frame.time_base = index, 1 / rate
        graph.push(frame)
    graph.push(None)
    while True:
        try:
            yield graph.pull()
        except EOFError:  # av.error.EOFError: the last frame is out
            return


def _yuv_frames(av: Any, frames: np.ndarray, pixel_format: str) -> Any:
    """The frames in ``pixel_format`` by the BT.709 matrix, limited range, as the stream is tagged."""
    for pixels in frames:
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
        yield frame.reformat(format=pixel_format, dst_colorspace=_BT709, dst_color_range=_LIMITED_RANGE)


def _encode(av: Any, file: Any, frames: np.ndarray, rate: Fraction, spec: _Format) -> None:
    height, width = frames.shape[1:3]
    pixel_format = spec.pixel_format
    if spec.codec == "libx264" and (height % 2 or width % 2):
        # 4:2:0 halves the colour planes, so H.264 cannot hold odd sides in it;
        # 4:4:4 keeps the size (the High 4:4:4 profile: not every player has it).
        pixel_format = "yuv444p"
    # No +faststart (index first): its second pass reopens the file by name, and
    # write_atomically's temporary file has none that FFmpeg can open.
    with av.open(file, "w", format=spec.container) as output:
        stream = output.add_stream(spec.codec, rate=rate, options=dict(spec.options))
        stream.width, stream.height, stream.pix_fmt = width, height, pixel_format
        if pixel_format.startswith("yuv"):
            context = stream.codec_context
            context.colorspace = context.color_primaries = context.color_trc = _BT709
            context.color_range = _LIMITED_RANGE
            pictures = _yuv_frames(av, frames, pixel_format)
        elif spec.codec == "gif":
            pictures = _gif_frames(av, frames, rate)
        else:
            pictures = (av.VideoFrame.from_ndarray(pixels, format="rgb24") for pixels in frames)
        for picture in pictures:
            output.mux(stream.encode(picture))
        output.mux(stream.encode(None))


def write_video(path: PathLike, frames: np.ndarray, fps: float) -> None:
    """Write ``frames`` (uint8 (T, H, W, 3) RGB) at ``fps`` frames per second to
    ``path`` atomically, in the container and codec its suffix names: .mp4 H.264
    (4:2:0, CRF 14; 4:4:4 for odd sides), .webm VP9 (CRF 18), .mov ProRes 4444, .mkv
    FFV1 (lossless RGB: frames read back byte-exact), .gif one 256-colour palette,
    dithered (lossy in colour; at most 50 fps). See docs/video-files.md. All but .mkv
    lose pixels, kept ones included: they are written as asked, with one
    :class:`~kdiff_differential.errors.LossyWarning` naming .mkv and :func:`write_frames`."""
    av = require_video()
    suffix = Path(path).suffix.lower()
    if suffix not in _FORMATS:
        raise ValueError(f"path must end in one of {', '.join(VIDEO_SUFFIXES)} (it names the container), "
                         f"got {str(path)!r}")
    frames = _check_frames(frames)
    rate = _check_fps(fps, suffix)
    if _FORMATS[suffix].loss:
        warnings.warn(f"{path}: {_FORMATS[suffix].loss}, so the written frames, kept pixels included, are not the "
                      f"frames' bytes; write .mkv (FFV1, lossless) or PNG frames (write_frames) to keep them exact",
                      LossyWarning, stacklevel=2)
    write_atomically(path, lambda file: _encode(av, file, frames, rate, _FORMATS[suffix]), binary=True)


def _frame_names(count: int, stem: str) -> list[str]:
    digits = max(5, len(str(count - 1)))
    return [f"{stem}_{index:0{digits}d}.png" for index in range(count)]


def write_frames(folder: PathLike, frames: np.ndarray, stem: str = "frame") -> list[Path]:
    """Write every frame of ``frames`` (uint8 (T, H, W, 3)) as a lossless PNG,
    ``{stem}_00000.png`` ... (zero-padded to the frame count's width, at least 5),
    each atomically, into ``folder`` (created if missing); return their paths.

    Files of those names are replaced and other files are left alone; InputError,
    before anything is written, when ``folder`` holds a ``{stem}_<number>.png`` that
    this run would not replace (from a longer run), so that the folder never holds a
    mix of two runs' frames. PNGs need Pillow alone, not the ``video`` extra."""
    from .images import write_image

    frames = _check_frames(frames)
    if not isinstance(stem, str) or not stem or Path(stem).name != stem:
        raise ValueError(f"stem must be a file name without a folder, got {stem!r}")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: is a file; give a folder for the frames")
    paths = [folder / name for name in _frame_names(len(frames), stem)]
    pattern = re.compile(re.escape(stem) + r"_\d+\.png")
    ours = {path.name for path in paths}
    if folder.is_dir():
        stale = sorted(entry.name for entry in folder.iterdir() if pattern.fullmatch(entry.name) and entry.name not in ours)
        if stale:
            shown = ", ".join(stale[:2]) + (f" and {len(stale) - 2} more" if len(stale) > 2 else "")
            raise InputError(f"{folder}: already holds {shown} from a longer run, which these {len(frames)} frames "
                             f"would not replace; empty the folder or choose another")
    folder.mkdir(parents=True, exist_ok=True)
    for path, frame in zip(paths, frames):
        write_image(frame, str(path))
    return paths
