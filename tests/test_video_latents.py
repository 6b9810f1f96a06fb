"""Video latents (B, C, F, H, W): a map per video frame, brought to latent frames, and the
wrapper's guarantees with every k-diffusion sampler on 5-D tensors."""

import pytest
import torch
from k_diffusion import sampling
from torch import nn

from kdiff_differential import DifferentialDenoiser
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.maps.latent import latent_frames, latent_map

from conftest import ADAPTIVE, SAMPLERS, SIZE, smooth_images

STEPS = 12
LATENT_FRAMES = 3
VIDEO_FRAMES = 4 * (LATENT_FRAMES - 1) + 1  # Wan's VAE: the first frame alone, then 4 per latent frame


class FramesAsImages(nn.Module):
    """A video denoiser made of an image one: every frame denoised on its own, F folded
    into the batch. Its clock is the image denoiser's (found as ``inner_model``)."""

    def __init__(self, inner_model) -> None:
        super().__init__()
        self.inner_model = inner_model

    def forward(self, x, sigma, **kwargs):
        batch, channels, frames, height, width = x.shape
        images = x.transpose(1, 2).reshape(batch * frames, channels, height, width)
        out = self.inner_model(images, sigma.repeat_interleave(frames), **kwargs)
        return out.reshape(batch, frames, channels, height, width).transpose(1, 2)


def as_images(video):
    """(B, C, F, H, W) -> (B*F, C, H, W): the frames as a batch of images."""
    return video.transpose(1, 2).flatten(0, 1)


def as_video(images, batch=1):
    """(B*F, C, H, W) -> (B, C, F, H, W)."""
    return images.unflatten(0, (batch, -1)).transpose(1, 2)


def pooled_by_loop(per_frame, frames_per_latent):
    """The latent frames' strengths, written out: the first frame alone, then the
    elementwise largest of each group of ``frames_per_latent`` frames."""
    out = [per_frame[..., 0, :, :]]
    for start in range(1, per_frame.shape[-3], frames_per_latent):
        strongest = per_frame[..., start, :, :]
        for t in range(start + 1, start + frames_per_latent):
            strongest = torch.maximum(strongest, per_frame[..., t, :, :])
        out.append(strongest)
    return torch.stack(out, dim=-3)


def halves_map():
    """Still: left half keep, right half change."""
    change = torch.zeros(SIZE, SIZE)
    change[:, SIZE // 2 :] = 1
    return change


def moving_map():
    """Per video frame: a 4-column band of change moving right by one column a frame,
    so each latent frame's pooled band is wider than any frame's and moves too."""
    change = torch.zeros(VIDEO_FRAMES, SIZE, SIZE)
    for t in range(VIDEO_FRAMES):
        change[t, :, t : t + 4] = 1
    return change


MAPS = {"still": halves_map, "moving": moving_map}


@pytest.fixture(scope="module")
def video_ideal(ideal):
    return FramesAsImages(ideal)


@pytest.fixture(scope="module")
def video():
    """A clip's latent, (1, 3, F, 16, 16): its frames are smooth images of their own."""
    return as_video(smooth_images(LATENT_FRAMES, seed=5))


@pytest.fixture(scope="module")
def sigmas(ideal):
    return ideal.get_sigmas(STEPS)


def per_latent_frame(change_map):
    """The test's own reading of a map as strengths per latent frame, (F, H, W)."""
    if change_map.ndim == 2:
        return change_map.expand(LATENT_FRAMES, -1, -1)
    return pooled_by_loop(change_map, 4)


def noise_sampler(shape):
    """A noise sampler drawing from its own generator: the ancestral and SDE samplers'
    noise, the same draws for a video run (frames moved to their place) and an image run."""
    generator = torch.Generator().manual_seed(11)
    video = len(shape) == 5
    images = (shape[0] * shape[2], shape[1], *shape[3:]) if video else shape

    def draw(sigma, sigma_next):
        noise = torch.randn(images, generator=generator)
        return as_video(noise, shape[0]) if video else noise

    return draw


def sample(name, dd, sigmas):
    """One sampler run on the wrapper, taken to sigma 0 (``finish`` after a range sampler)."""
    x = dd.noisy_latent()
    takes_noise = name not in ("euler", "heun", "dpm_2", "lms", "dpmpp_2m")
    kwargs = {"noise_sampler": noise_sampler(tuple(x.shape))} if takes_noise else {}
    run = getattr(sampling, f"sample_{name}")
    if name in ADAPTIVE:
        span = (sigmas[-2].item(), sigmas[0].item())
        steps = (STEPS,) if name == "dpm_fast" else ()
        return dd.finish(run(dd, x, *span, *steps, disable=True, **kwargs))
    return run(dd, x, sigmas, disable=True, **kwargs)


def wrapper(name, inner, latent, change_map, sigmas, noise, **settings):
    if name in ADAPTIVE:
        return DifferentialDenoiser(inner, latent, change_map, sigma_min=sigmas[-2].item(), sigma_max=sigmas[0].item(),
                                    noise=noise, sampler=name, **settings)
    return DifferentialDenoiser(inner, latent, change_map, sigmas=sigmas, noise=noise, sampler=name, **settings)


@pytest.fixture(scope="module")
def runs(ideal, video_ideal, video, sigmas):
    """Every sampler on the clip with each map, and the same run on its frames as a batch of
    images (the 4-D path) with the test's own per-latent-frame maps: {(sampler, map): (video
    wrapper, video result, image result)}."""
    noise = torch.randn(LATENT_FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))
    out = {}
    for kind, make in MAPS.items():
        change_map = make()
        for name in SAMPLERS:
            dd = wrapper(name, video_ideal, video, change_map, sigmas, as_video(noise))
            images = wrapper(name, ideal, as_images(video), per_latent_frame(change_map), sigmas, noise)
            out[name, kind] = dd, sample(name, dd, sigmas), sample(name, images, sigmas)
    return out


@pytest.mark.parametrize("kind", MAPS)
@pytest.mark.parametrize("name", SAMPLERS)
def test_frozen_pixels_end_as_the_original_in_every_frame(name, kind, runs, video):
    _, out, _ = runs[name, kind]
    frozen = (per_latent_frame(MAPS[kind]()) == 0).expand_as(out[0])
    assert frozen[:, 0].any() and frozen[:, -1].any()  # every latent frame holds some
    kept = (out - video).abs()[0][frozen]
    if name in ADAPTIVE:  # finish takes them to the latent exactly
        assert torch.equal(out[0][frozen], video[0][frozen])
    else:
        assert kept.max() < 1e-5, kept.max()


@pytest.mark.parametrize("kind", MAPS)
@pytest.mark.parametrize("name", SAMPLERS)
def test_changed_pixels_change_in_every_frame(name, kind, runs, video):
    _, out, _ = runs[name, kind]
    released = (per_latent_frame(MAPS[kind]()) == 1).expand_as(out[0])
    for frame in range(LATENT_FRAMES):
        change = (out - video).abs()[0][:, frame][released[:, frame]]
        assert change.mean() > 0.3, (frame, change.mean())


@pytest.mark.parametrize("kind", MAPS)
@pytest.mark.parametrize("name", SAMPLERS)
def test_a_video_run_equals_its_frames_run_as_images(name, kind, runs):
    """Clock, release rules (the faithful one told the sampler: Heun's state, its tables),
    noise and re-noising act on 5-D tensors as on the frames run as a batch of images,
    each with its latent frame's map pooled by the test's loop."""
    _, out, images = runs[name, kind]
    torch.testing.assert_close(as_images(out), images, rtol=1e-5, atol=1e-5)


SETTINGS = [
    dict(release="binary"), dict(release="smooth"), dict(strength=0.5), dict(compat="comfyui"), dict(keep_map=True),
    dict(compat="diffusers"), dict(clock="step"),
]
# A range sampler has no schedule: no step clock and no step-index rule (refused on images too).
SCHEDULE_ONLY = SETTINGS[-2:]


@pytest.mark.parametrize("name, settings", [
    (name, settings) for name in ("heun", "dpmpp_2m_sde", "dpm_fast") for settings in SETTINGS
    if name not in ADAPTIVE or settings not in SCHEDULE_ONLY
])
def test_every_release_rule_and_policy_runs_a_video_as_its_frames(name, settings, ideal, video_ideal, video, sigmas):
    change_map = moving_map()
    noise = torch.randn(LATENT_FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    # A keep-map is flipped before the pooling: the test pools the change, 1 - keep.
    given = 1 - change_map if settings.get("keep_map") else change_map
    image_map = pooled_by_loop(change_map, 4)
    image_map = 1 - image_map if settings.get("keep_map") else image_map
    dd = wrapper(name, video_ideal, video, given, sigmas, as_video(noise), **settings)
    images = wrapper(name, ideal, as_images(video), image_map, sigmas, noise, **settings)
    torch.testing.assert_close(as_images(sample(name, dd, sigmas)), sample(name, images, sigmas), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["heun", "dpmpp_2m_sde", "dpm_adaptive"])
def test_a_batch_of_videos_with_maps_of_their_own_runs_as_their_frames(name, ideal, video_ideal, video, sigmas):
    videos = torch.cat([video, video.flip(-1)])
    maps = torch.stack([moving_map(), moving_map().flip(-2)])
    noise = torch.randn(2 * LATENT_FRAMES, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(9))
    dd = wrapper(name, video_ideal, videos, maps, sigmas, as_video(noise, 2))
    images = wrapper(name, ideal, as_images(videos), pooled_by_loop(maps, 4).flatten(0, 1), sigmas, noise)
    torch.testing.assert_close(as_images(sample(name, dd, sigmas)), sample(name, images, sigmas), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("frames_per_latent", [1, 2, 4, 8])
def test_temporal_pooling_equals_the_loop(frames_per_latent):
    frames = 1 + frames_per_latent * (LATENT_FRAMES - 1)
    per_frame = torch.rand(2, 1, frames, 5, 7, generator=torch.Generator().manual_seed(frames_per_latent))
    expected = pooled_by_loop(per_frame, frames_per_latent)
    torch.testing.assert_close(latent_frames(per_frame, LATENT_FRAMES, frames_per_latent), expected, rtol=0, atol=0)
    mapped = latent_map(per_frame, (2, 4, LATENT_FRAMES, 5, 7), frames_per_latent=frames_per_latent)
    torch.testing.assert_close(mapped, expected, rtol=0, atol=0)


@pytest.mark.parametrize("resize", ["antialias", "bilinear", "nearest"])
def test_frames_are_pooled_then_each_resized_as_an_image_map(resize):
    per_frame = torch.rand(VIDEO_FRAMES, 24, 20, generator=torch.Generator().manual_seed(0))
    pooled = pooled_by_loop(per_frame, 4)
    expected = torch.stack([latent_map(frame, (1, 4, 8, 6), resize=resize)[0, 0] for frame in pooled])
    mapped = latent_map(per_frame, (1, 4, LATENT_FRAMES, 8, 6), resize=resize)
    assert mapped.shape == (1, 1, LATENT_FRAMES, 8, 6)
    torch.testing.assert_close(mapped[0, 0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape", [(SIZE, SIZE), (1, SIZE, SIZE), (1, 1, SIZE, SIZE), (1, 1, 1, SIZE, SIZE)])
def test_a_still_map_is_every_frames_map(shape):
    still = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    mapped = latent_map(still.reshape(shape), (1, 4, LATENT_FRAMES, SIZE, SIZE))
    for frame in range(LATENT_FRAMES):
        torch.testing.assert_close(mapped[0, 0, frame], still, rtol=0, atol=0)


def test_maps_per_video_in_a_batch():
    per_video = torch.rand(2, VIDEO_FRAMES, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    expected = pooled_by_loop(per_video, 4)
    for given in (per_video, per_video[:, None]):
        mapped = latent_map(given, (2, 4, LATENT_FRAMES, SIZE, SIZE))
        torch.testing.assert_close(mapped[:, 0], expected, rtol=0, atol=0)


@pytest.mark.parametrize("keep_map", [False, True])
@pytest.mark.parametrize("frame", range(VIDEO_FRAMES))
def test_a_frame_that_must_change_releases_its_latent_frame(frame, keep_map, video_ideal, video, sigmas):
    """Change asked in one video frame only: its latent frame (0 for the first frame, then
    one per 4 frames) releases the region and changes it; the other latent frames keep it."""
    change = torch.zeros(VIDEO_FRAMES, SIZE, SIZE)
    change[frame, 4:12, 4:12] = 1
    given = 1 - change if keep_map else change
    latent_frame = 0 if frame == 0 else (frame - 1) // 4 + 1
    dd = wrapper("euler", video_ideal, video, given, sigmas, None, keep_map=keep_map,
                 generator=torch.Generator().manual_seed(0))
    assert torch.equal(dd.change_map[0, 0, latent_frame, 4:12, 4:12], torch.ones(8, 8))
    out = sample("euler", dd, sigmas)
    region = (out - video).abs()[0, :, :, 4:12, 4:12]
    assert region[:, latent_frame].mean() > 0.3
    others = [f for f in range(LATENT_FRAMES) if f != latent_frame]
    assert region[:, others].max() < 1e-5


def test_release_mask_is_handed_over_per_frame(video, sigmas):
    """An inner denoiser that asks for ``release_mask`` gets the call's mask per latent
    frame, (k*B, 1, F, H, W): B = 2 videos with maps of their own, k = 2 as a guidance
    wrapper's batch; and at the start from noise (a flow model's first step), k = 1."""
    seen = []

    class Inner(nn.Module):
        sigma_min, sigma_max = sigmas[-2], sigmas[0]

        def forward(self, x, sigma, release_mask=None):
            seen.append(release_mask)
            return torch.zeros_like(x)

    videos = torch.cat([video, video.flip(-1)])
    maps = torch.stack([moving_map(), moving_map().flip(-1)])
    dd = DifferentialDenoiser(Inner(), videos, maps, sigmas=sigmas, clock="sigma", release="binary",
                              generator=torch.Generator().manual_seed(0))
    level = sigmas[STEPS // 2]
    dd(torch.cat([dd.noisy_latent()] * 2), level.expand(4), release_mask=None)
    mask = dd.mask(level.item())
    assert seen[-1].shape == (4, 1, LATENT_FRAMES, SIZE, SIZE)
    for call in range(4):
        assert torch.equal(seen[-1][call], mask[call % 2])
    assert not torch.equal(mask[0], mask[1]) and 0 < mask.mean() < 1
    dd.start_from_noise(sigmas[1].item(), release_mask=None)
    assert torch.equal(seen[-1], dd.mask(float("inf")))


def test_differential_edit_on_a_video_latent(video_ideal, video):
    edit = differential_edit(video_ideal, video, moving_map(), sampler="dpmpp_2m", steps=10, seed=0)
    assert edit.result.shape == video.shape
    frozen = (pooled_by_loop(moving_map(), 4) == 0).expand_as(video[0])
    assert (edit.result - video).abs()[0][frozen].max() < 1e-5
    assert (edit.result - video).abs()[0][~frozen].mean() > 0.3
    mask = edit.wrapper.mask(edit.step_sigmas[-1])  # the last call: every pixel with s > 0 free
    assert mask.shape == (1, 1, LATENT_FRAMES, SIZE, SIZE)
    assert torch.equal(mask[0, 0], (pooled_by_loop(moving_map(), 4) > 0).float())


@pytest.mark.parametrize("frames_per_latent", [1, 2])
def test_differential_edit_takes_frames_per_latent(frames_per_latent, video_ideal, video):
    frames = 1 + frames_per_latent * (LATENT_FRAMES - 1)
    change = torch.zeros(frames, SIZE, SIZE)
    change[-1] = 1  # change in the last video frame only: the last latent frame
    edit = differential_edit(video_ideal, video, change, steps=6, seed=0, frames_per_latent=frames_per_latent)
    assert torch.equal(edit.wrapper.change_map[0, 0, :, 0, 0], torch.tensor([0.0, 0.0, 1.0]))


@pytest.mark.parametrize("change_map, frames_per_latent, error, words", [
    (torch.zeros(8, SIZE, SIZE), 4, ValueError, "change_map has 8 frames, but the latent's 3 latent frames stand for 9 video frames"),
    (torch.zeros(3, SIZE, SIZE), 4, ValueError, "stand for 9 video frames"),
    (torch.zeros(3, SIZE, SIZE), 2, ValueError,
     "stand for 5 video frames (the first alone, then 2 per latent frame; frames_per_latent=2)"),
    (torch.zeros(1, 2, 9, SIZE, SIZE), 4, ValueError,
     "change_map for a video latent (B, C, F, H, W) must be (H, W), (T, H, W), (B, T, H, W) or (B, 1, T, H, W)"),
    (torch.zeros(1, 1, 1, 9, SIZE, SIZE), 4, ValueError, "got shape (1, 1, 1, 9, 16, 16)"),
    (torch.zeros(2, 9, SIZE, SIZE), 4, ValueError, "change_map has batch 2"),
    (torch.zeros(0, SIZE, SIZE), 4, ValueError, "change_map is empty"),
    (torch.zeros(SIZE, SIZE), 0, ValueError, "frames_per_latent must be a positive int, got 0"),
    (torch.zeros(SIZE, SIZE), True, TypeError, "frames_per_latent must be a positive int, got bool"),
    (torch.zeros(SIZE, SIZE), 4.0, TypeError, "frames_per_latent must be a positive int, got float"),
])
def test_bad_video_maps_fail_naming_the_argument(change_map, frames_per_latent, error, words, video_ideal, video, sigmas):
    with pytest.raises(error) as raised:
        DifferentialDenoiser(video_ideal, video, change_map, sigmas=sigmas, frames_per_latent=frames_per_latent)
    assert words in str(raised.value)


def test_bad_calls_on_a_video_wrapper_fail_naming_the_argument(video_ideal, video, sigmas):
    dd = DifferentialDenoiser(video_ideal, video, halves_map(), sigmas=sigmas, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"x must be \(k\*1, 3, 3, 16, 16\) for a whole k, matching the latent, got shape \(3, 3, 16, 16\)"):
        dd(as_images(video), sigmas[0])
    with pytest.raises(ValueError, match=r"noise must have the latent's shape \(1, 3, 3, 16, 16\), got \(3, 3, 16, 16\)"):
        DifferentialDenoiser(video_ideal, video, halves_map(), sigmas=sigmas, noise=as_images(video))
    with pytest.raises(ValueError, match=r"latent_shape must be \(B, C, H, W\) or \(B, C, F, H, W\)"):
        latent_map(halves_map(), (4, SIZE, SIZE))


def test_an_image_latent_ignores_frames_per_latent_but_checks_it(ideal, latent, sigmas):
    image_map = torch.rand(SIZE, SIZE, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(latent_map(image_map, latent.shape, frames_per_latent=2), latent_map(image_map, latent.shape))
    with pytest.raises(ValueError, match="frames_per_latent"):
        latent_map(image_map, latent.shape, frames_per_latent=-1)


def test_the_video_map_figure_is_written(tmp_path, capsys):
    from PIL import Image

    from samplers.video_map_figure import VIDEO_FRAMES as SHOWN, main

    out = tmp_path / "figure.png"
    assert main(["--out", str(out), "--side", "24"]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    with Image.open(out) as figure:
        assert figure.width >= SHOWN * 24 and figure.height > 3 * 24
