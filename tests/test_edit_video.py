"""edit_video, a clip's whole edit as one library call, on the built-in model: kept pixels
are the input's bytes in every frame, changed ones change, the frame count comes back
(padded to the model's count and trimmed), still and moving maps, one colour correction
for the whole clip, and the settings checked by name."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from kdiff_differential import EditSettings, edit_video
from kdiff_differential.stages.color_matching import match_colors
from kdiff_differential.errors import InputError
from kdiff_differential.errors import EditWarning
from kdiff_differential.models.builtin import Builtin, load_example_clip
from kdiff_differential.editing.pipeline import frame_count

HEIGHT, WIDTH = 40, 48


def clip(frames: int, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """The example clip (a pan), small: uint8 (frames, height, width, 3)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(frame).resize((width, height), Image.BICUBIC)) for frame in load_example_clip(frames)])


def moving_square(frames: int, side: int = 16, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    """A map per frame: a square of change that moves right 2 pixels a frame, float32 (T, H, W)."""
    maps = np.zeros((frames, height, width), np.float32)
    for t in range(frames):
        maps[t, 12 : 12 + side, 4 + 2 * t : 4 + 2 * t + side] = 1
    return maps


@pytest.fixture(scope="module")
def model() -> Builtin:
    return Builtin()


SETTINGS = dict(sampler="euler", steps=4, crop="off")
SEED = 3


def test_a_map_per_frame_as_a_list_or_as_colour_frames_reads_as_the_array(model: Builtin) -> None:
    maps = moving_square(5)
    grey = (maps * 255).astype(np.uint8)
    colour = np.repeat(grey[..., None], 3, axis=-1)
    expected = edit_video(model, clip(5), maps, EditSettings(**SETTINGS), seed=SEED).frames
    assert np.array_equal(edit_video(model, clip(5), list(maps), EditSettings(**SETTINGS), seed=SEED).frames, expected)
    assert np.array_equal(edit_video(model, clip(5), colour, EditSettings(**SETTINGS), seed=SEED).frames, expected)


class Merging:
    """The built-in model, merging 4 frames into a latent frame as Wan's VAE does (the
    first alone): its latent holds frames 0, 4, 8, ..., and decoding repeats each latent
    frame over the frames it stands for. It records the frames it is fitted to."""

    frames_per_latent = 4
    native_side, flow, description, builtin = None, False, "merging test model", False
    schedule, steps, cfg = "karras", 4, None

    def __init__(self) -> None:
        self.seen = []

    def fit(self, frames: np.ndarray):
        assert (len(frames) - 1) % 4 == 0
        self.seen.append(frames)
        fitted = Builtin().fit(frames[::4])
        decode = fitted.decode
        fitted.decode = lambda latent: np.concatenate([decode(latent)[:1], np.repeat(decode(latent)[1:], 4, axis=0)])
        return fitted


@pytest.mark.parametrize("frames", [9, 10])
@pytest.mark.parametrize("moving", [False, True], ids=["still-map", "moving-map"])
@pytest.mark.parametrize("merging", [False, True], ids=["builtin", "merging"])
@pytest.mark.filterwarnings("ignore:10 frames:kdiff_differential.errors.EditWarning")
def test_kept_pixels_are_the_inputs_bytes_in_every_frame_and_changed_pixels_change(model: Builtin, frames: int, moving: bool, merging: bool) -> None:
    """On the built-in model, whose frames come back exact where frozen, and on one whose
    decoding does not (``Merging``, as a VAE): the composite puts each frame's bytes back."""
    model = Merging() if merging else model
    frames_in = clip(frames)
    change_map = moving_square(frames) if moving else "gradient-x"
    done = edit_video(model, frames_in, change_map, EditSettings(**SETTINGS), seed=SEED)
    assert done.frames.shape == frames_in.shape and done.frames.dtype == np.uint8
    assert done.change_map.shape == (frames, HEIGHT, WIDTH)
    for t in range(frames):
        kept, changed = done.change_map[t] == 0, done.change_map[t] == 1
        assert kept.any() and changed.any()
        assert np.array_equal(done.frames[t][kept], frames_in[t][kept]), f"frame {t}"
        assert np.abs(done.frames[t][changed].astype(int) - frames_in[t][changed]).mean() > 10, f"frame {t}"
    if moving:  # each frame's own map, not one for the clip: the square has moved in the last frame
        assert not np.array_equal(done.change_map[0], done.change_map[-1])
        assert np.array_equal(done.change_map, moving_square(frames))


def test_a_clip_is_padded_with_its_last_frame_to_the_models_count_and_trimmed_back() -> None:
    model, frames_in = Merging(), clip(10)
    with pytest.warns(EditWarning, match=r"10 frames: this model takes 4k \+ 1 frames; the last frame is repeated 3 times to make 13"):
        done = edit_video(model, frames_in, "gradient-x", EditSettings(**SETTINGS), seed=SEED)
    seen = model.seen[0]
    assert len(seen) == 13 and np.array_equal(seen[:10], frames_in)
    assert all(np.array_equal(frame, frames_in[-1]) for frame in seen[10:])
    assert done.frames.shape == frames_in.shape and done.padded == 3
    assert done.run.result.shape[2] == 4  # 13 frames in 4 latent frames
    kept = done.change_map == 0
    assert np.array_equal(done.frames[kept], frames_in[kept])


@pytest.mark.parametrize("frames, expected", [(1, 1), (2, 5), (5, 5), (9, 9), (10, 13), (81, 81), (82, 85)])
def test_frame_count_is_the_next_4k_plus_1(frames: int, expected: int) -> None:
    assert frame_count(frames, 4) == expected
    assert frame_count(frames, 1) == frames


def test_the_colour_correction_is_one_for_the_whole_clip() -> None:
    """Two frames of different content, each with the same cast colour patch at strength 1:
    a correction measured frame by frame would move the patch differently in each; the
    clip's one correction moves it the same."""
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    original[1] = 255 - original[1]  # other statistics in the second frame's band
    result = np.clip(original.astype(int) + (30, -10, 5), 0, 255).astype(np.uint8)
    result[:, 12:20, 12:20] = (120, 60, 200)
    strength = np.zeros((32, 32), np.float32)
    strength[8:24, 8:24] = 1
    strength[6:8, 6:26] = strength[24:26, 6:26] = strength[6:26, 6:8] = strength[6:26, 24:26] = 0.5
    matched = match_colors(result, original, strength)
    assert np.array_equal(matched[0, 12:20, 12:20], matched[1, 12:20, 12:20])
    assert np.abs(matched[0, 12:20, 12:20].astype(int) - (120, 60, 200)).max() > 3  # it was corrected at all
    one_by_one = np.stack([match_colors(result[t], original[t], strength) for t in range(2)])
    assert not np.array_equal(one_by_one[0, 12:20, 12:20], one_by_one[1, 12:20, 12:20])  # the control
    assert np.array_equal(matched[:, strength == 0], result[:, strength == 0])


def test_colour_match_on_a_clip_keeps_kept_pixels_exact(model: Builtin) -> None:
    frames_in = clip(5)
    done = edit_video(model, frames_in, moving_square(5), EditSettings(color_match=True, feather=6, **SETTINGS), seed=SEED)
    kept = done.change_map == 0
    assert np.array_equal(done.frames[kept], frames_in[kept])


def test_a_map_that_changes_nothing_returns_the_clip_without_running_the_model() -> None:
    class Refusing(Merging):
        def fit(self, frames):
            raise AssertionError("the model ran")

    frames_in = clip(3)
    with pytest.warns(EditWarning, match="0 in every frame"):
        done = edit_video(Refusing(), frames_in, "none", EditSettings(**SETTINGS), seed=SEED)
    assert np.array_equal(done.frames, frames_in) and done.run is None


def test_the_crop_runs_the_model_on_every_frames_change_box(model: Builtin) -> None:
    frames_in = clip(5, 96, 128)
    maps = moving_square(5, 8, 96, 128)
    done = edit_video(model, frames_in, maps, EditSettings(sampler="euler", steps=4, crop="auto", crop_padding=0.1), seed=3)
    assert done.region.cropped
    union = maps.max(axis=0)
    rows, columns = np.nonzero(union)
    region = done.region
    assert region.top <= rows.min() and rows.max() < region.top + region.height
    assert region.left <= columns.min() and columns.max() < region.left + region.width
    kept = done.change_map == 0
    assert np.array_equal(done.frames[kept], frames_in[kept])


@pytest.mark.parametrize("change_map, message", [
    (moving_square(4), "maps of 4 frames for a clip of 5"),
    ([np.zeros((HEIGHT, WIDTH))] * 2, "2 maps for a clip of 5 frames"),
])
def test_maps_of_another_frame_count_are_refused(model: Builtin, change_map, message: str) -> None:
    with pytest.raises(InputError, match=message):
        edit_video(model, clip(5), change_map, EditSettings(**SETTINGS), seed=SEED)


@pytest.mark.parametrize("frames", [np.zeros((4, 8, 3), np.uint8), np.zeros((2, 4, 8, 3), np.float32), np.zeros((0, 4, 8, 3), np.uint8)])
def test_frames_that_are_not_a_uint8_clip_are_a_type_error(model: Builtin, frames) -> None:
    with pytest.raises(TypeError, match=r"frames must be a uint8 array \(T, H, W, 3\)"):
        edit_video(model, frames, "full")


def test_settings_are_checked_by_name_before_the_model_runs() -> None:
    with pytest.raises(TypeError, match="grow="):
        edit_video(Merging(), clip(2), "gradient-x", EditSettings(grow="big"))
    with pytest.raises(InputError, match="inpaint_mask='fixed': for images; a video edit takes none"):
        edit_video(Merging(), clip(2), "gradient-x", EditSettings(inpaint_mask="fixed"))


def test_an_image_model_is_refused_a_clip_by_name() -> None:
    class ImageOnly(Merging):
        frames_per_latent = None
        description = "Stable Diffusion XL, text-to-image"

    with pytest.raises(InputError, match=r"the model \(Stable Diffusion XL, text-to-image\) edits images only; a video needs a video model"):
        edit_video(ImageOnly(), clip(2))


def test_the_builtin_models_clip_denoiser_weighs_the_whole_clip() -> None:
    """A still-clip model: the posterior over its images is one for the whole clip, so every
    frame of a pure-noise clip denoises towards the same image."""
    fitted = Builtin().fit(clip(3))
    torch.manual_seed(0)
    x0 = fitted.denoiser(torch.randn_like(fitted.latent) * 3, torch.tensor([3.0]))
    assert torch.allclose(x0[:, :, 0], x0[:, :, 1], atol=0.05) and torch.allclose(x0[:, :, 1], x0[:, :, 2], atol=0.05)


def test_warnings_of_the_settings_reach_the_caller() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        edit_video("builtin", clip(2), "full", EditSettings(prompt="a cat", **SETTINGS), seed=SEED)
    assert any("takes no text" in str(warning.message) for warning in caught)


def test_the_flicker_metric_is_the_mean_frame_to_frame_change_where_asked() -> None:
    from samplers.video_flicker import flicker

    frames = np.zeros((3, 4, 4, 3), np.uint8)
    frames[1, 0, 0] = 30  # frame 0 -> 1: +30 at (0, 0); 1 -> 2: -30
    frames[2, 1, 1] = 90  # frame 1 -> 2: +90 at (1, 1), outside the pixels asked
    where = np.zeros((4, 4), bool)
    where[0, :2] = True
    assert flicker(frames, where) == pytest.approx((30 + 0 + 30 + 0) / 4)


def test_the_video_figure_is_written(tmp_path, capsys) -> None:
    from PIL import Image

    from samplers.video_figure import main

    out = tmp_path / "figure.png"
    assert main(["--out", str(out), "--steps", "2"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    with Image.open(out) as figure:
        assert figure.width > 3 * 256 and figure.height > 3 * 256
