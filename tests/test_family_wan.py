"""Wan 2.1 and 2.2 (the tiny folders ``wan``, ``wan-ti2v``, ``wan-a14b``) against
diffusers' WanPipeline and WanVideoToVideoPipeline, every sampler on a per-frame map,
and the loader's video contract (fit, decode, frame counts).

The schedule. Wan's folders name UniPCMultistepScheduler with ``use_flow_sigmas``: the
unshifted times ``linspace(1, 1/N, n + 1)[:-1]`` (N the training steps), shifted by the
constant ``flow_shift``. diffusers' Euler scheduler for flow models,
``FlowMatchEulerDiscreteScheduler(shift=flow_shift)``, spaces its times otherwise unless
given them; :func:`euler_reference` gives it that spacing (checked against the folder's
own UniPC scheduler), so that the two pipelines run the same levels and Euler's steps.
"""

from __future__ import annotations

import functools
import json
import math
import shutil

import diffusers
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SAMPLERS, largest_output, ramp_image

from kdiff_differential import load_pipeline
from kdiff_differential.core.samplers import OWN_STEPS
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.errors import InputError
from kdiff_differential.models import find_model
from kdiff_differential.models.builtin import Builtin
from kdiff_differential.models.families import Wan, family_of_index

SIZE = (32, 96)  # pixels: a multiple of the VAE's factor times the patch (TI2V's 16 x 2); latent 4 x 12 (TI2V: 2 x 6)
FRAMES = 9  # 1 + 4 * 2: three latent frames
# max |ours - theirs| over the largest |theirs|, at most.
TOLERANCE = 1e-5


def clip(frames: int = FRAMES) -> np.ndarray:
    """A moving ramp: uint8 (frames, 32, 96, 3), each frame the ramp shifted by a pixel."""
    return np.stack([np.roll(ramp_image(*SIZE), i, axis=1) for i in range(frames)])


@functools.lru_cache(maxsize=None)
def loaded(folder):
    return load_pipeline(folder)


def unipc_spacing(n: int, train: int) -> np.ndarray:
    """UniPCMultistepScheduler's unshifted flow times (its ``use_flow_sigmas`` branch)."""
    return np.linspace(1, 1 / train, n + 1)[:-1]


def euler_reference(kind: str, folder) -> diffusers.DiffusionPipeline:
    """diffusers' pipeline ``kind`` on ``folder`` with Euler for flow models on the
    folder's UniPC levels: FlowMatchEulerDiscreteScheduler(shift=flow_shift) told
    UniPC's unshifted times at every set_timesteps."""
    reference = getattr(diffusers, kind).from_pretrained(folder, local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    own = reference.scheduler
    assert own.config.use_flow_sigmas
    euler = diffusers.FlowMatchEulerDiscreteScheduler(shift=own.config.flow_shift, num_train_timesteps=own.config.num_train_timesteps)
    set_timesteps = euler.set_timesteps

    @functools.wraps(set_timesteps)
    def spaced(num_inference_steps=None, device=None, **kwargs):
        set_timesteps(num_inference_steps, device=device, sigmas=unipc_spacing(num_inference_steps, own.config.num_train_timesteps))
        own.set_timesteps(num_inference_steps)
        # The folder's own levels (its first nudged below 1 by 1e-6, against a log of 0).
        torch.testing.assert_close(euler.sigmas[1:], own.sigmas[1:].float(), rtol=0, atol=1e-6)

    euler.set_timesteps = spaced
    reference.scheduler = euler
    return reference


def record_calls(*modules: torch.nn.Module) -> list[list[tuple]]:
    """Each module's forward calls, as the shape of the timestep each is given (one per
    sample, or TI2V's one per token), recorded as they happen."""
    calls: list[list[tuple]] = [[] for _ in modules]
    for i, module in enumerate(modules):
        module.register_forward_pre_hook(lambda _, args, kwargs, i=i: calls[i].append(tuple(kwargs["timestep"].shape)), with_kwargs=True)
    return calls


def euler(pipe, latent, change, steps, extra_args, **settings):
    return differential_edit(pipe.denoiser_for(latent), latent, change, sampler="euler", steps=steps, schedule="model",
                             extra_args=extra_args, seed=5, **settings)


# (folder, our extra arguments, WanPipeline's settings, steps): the prompt with the
# negative prompt and guidance (WanPipeline's guidance_scale g is our cfg g).
TEXT_TO_VIDEO = {
    "wan": ("wan", dict(cfg=3.0), dict(guidance_scale=3.0), 3),
    # One timestep per token (expand_timesteps), the 48-channel latent.
    "wan-ti2v": ("wan-ti2v", dict(cfg=3.0), dict(guidance_scale=3.0), 3),
    # Four steps at t = 1000, 900, 750, 501: the first two by the high-noise expert
    # (t >= 875), the last two by the low-noise one with its own scale.
    "wan-a14b": ("wan-a14b", dict(cfg=3.0, cfg_2=2.0), dict(guidance_scale=3.0, guidance_scale_2=2.0), 4),
}


@pytest.mark.parametrize("name", list(TEXT_TO_VIDEO))
def test_euler_with_everything_released_is_wan_pipeline(name: str, tiny_family) -> None:
    folder_name, our_scales, their_scales, steps = TEXT_TO_VIDEO[name]
    folder = tiny_family(folder_name)
    pipe = loaded(folder)
    latent = torch.zeros(pipe.encode(clip()).shape)
    experts = pipe.denoising.experts
    ours_called = record_calls(*experts)
    edit = euler(pipe, latent, torch.ones(latent.shape[-2:]), steps, pipe.extra_args("a red cat", "blurry", **our_scales))
    reference = euler_reference("WanPipeline", folder)
    theirs_called = record_calls(*[part for part in (reference.transformer, reference.transformer_2) if part is not None])
    expected = reference(
        prompt="a red cat", negative_prompt="blurry", height=SIZE[0], width=SIZE[1], num_frames=FRAMES, num_inference_steps=steps,
        latents=edit.wrapper.noise.clone(), output_type="latent", **their_scales,
    ).frames
    assert (expected - edit.wrapper.noise).abs().mean() > 0.1  # the model moved the noise
    # Each expert called as often on both sides (twice per step: prompt and negative),
    # with timesteps of the same shape.
    assert ours_called == theirs_called
    assert [len(calls) for calls in ours_called] == ([4, 4] if len(experts) == 2 else [2 * steps])
    error = (edit.result - expected).abs().max() / expected.abs().max()
    assert error < TOLERANCE, error


def test_denoise_with_everything_released_is_wan_video_to_video(tiny_family, monkeypatch: pytest.MonkeyPatch) -> None:
    """WanVideoToVideoPipeline at strength 0.5 of 8 steps is our denoise=0.5 over 4: the
    input clip's normalised latent (the VAE's mode, which that pipeline takes too),
    noised to the fifth level with the same noise, then Euler."""
    from diffusers.pipelines.wan import pipeline_wan_video2video

    folder = tiny_family("wan")
    pipe = loaded(folder)
    frames = clip()
    latent = pipe.encode(frames)
    edit = euler(pipe, latent, torch.ones(latent.shape[-2:]), 4, pipe.extra_args("a red cat", "blurry", 3.0), denoise=0.5)
    monkeypatch.setattr(pipeline_wan_video2video, "randn_tensor", lambda shape, **_: edit.wrapper.noise.reshape(shape).clone())
    reference = euler_reference("WanVideoToVideoPipeline", folder)
    expected = reference(
        video=[Image.fromarray(frame) for frame in frames], prompt="a red cat", negative_prompt="blurry", height=SIZE[0],
        width=SIZE[1], num_inference_steps=8, strength=0.5, guidance_scale=3.0, output_type="latent",
    ).frames
    assert (expected - latent).abs().mean() > 0.05
    error = (edit.result - expected).abs().max() / expected.abs().max()
    assert error < TOLERANCE, error


def moving_map(frames: int, size: tuple[int, int]) -> torch.Tensor:
    """A change map per video frame (frames, h, w) at latent size: 0 left of column 1
    (frame 0), 2 (frames 1-4), 3 (frames 5-8), then a ramp over two columns that also
    rises down the rows and from frame to frame, then 1."""
    height, width = size
    rows, columns = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    maps = []
    for frame in range(frames):
        start = 1 + (frame + 3) // 4
        ramp = ((columns - start) + rows / height * 0.5 + (frame % 4) * 0.05 + 0.3) / 2
        maps.append(ramp.clamp(0, 1) * (columns >= start))
    return torch.stack(maps).float()


def pooled(per_frame: torch.Tensor, frames_per_latent: int) -> torch.Tensor:
    """The latent frames' strengths: the first frame alone, then the largest of each group."""
    groups = [per_frame[:1].amax(0)] + [per_frame[i : i + frames_per_latent].amax(0) for i in range(1, per_frame.shape[0], frames_per_latent)]
    return torch.stack(groups)


def test_a_moving_graded_map_is_the_differential_loop_around_wan_pipeline(tiny_family) -> None:
    """A map per frame with exact 0 and 1 and a ramp between, the binary release and the
    timestep clock: ours equals WanPipeline with a Differential Diffusion step written
    here (``callback_on_step_end``): after diffusers' step i, the latent pixels not free
    at step i (free: strength > 0 and >= tau_i, the latent frame's strength the largest
    of its video frames) are the input's latent re-noised to the next level,
    ``(1 - t) x0 + t noise``; ``tau_i = (t_i - t_to) / (t_0 - t_to)`` with t the flow
    time and t_to the 1/N of training shifted as the schedule is."""
    folder = tiny_family("wan")
    pipe = loaded(folder)
    latent = pipe.encode(clip())
    per_frame = moving_map(FRAMES, latent.shape[-2:])
    change = pooled(per_frame, 4)[None, None]
    steps = 4
    edit = euler(pipe, latent, per_frame, steps, pipe.extra_args("a red cat", "blurry", 3.0), release="binary", clock="timestep")
    noise = edit.wrapper.noise
    taus = []

    def step(reference, i, timestep, kwargs):
        scheduler = reference.scheduler
        k, u = scheduler.config.shift, 1 / scheduler.config.num_train_timesteps
        t_to = k * u / (1 + (k - 1) * u)
        tau = float((scheduler.sigmas[i] - t_to) / (scheduler.sigmas[0] - t_to))
        taus.append(tau)
        free = ((change > 0) & (change >= tau)).expand_as(latent)
        level = scheduler.sigmas[i + 1]
        return {"latents": torch.where(free, kwargs["latents"], (1 - level) * latent + level * noise)}

    expected = euler_reference("WanPipeline", folder)(
        prompt="a red cat", negative_prompt="blurry", height=SIZE[0], width=SIZE[1], num_frames=FRAMES, num_inference_steps=steps,
        guidance_scale=3.0, latents=noise.clone(), output_type="latent", callback_on_step_end=step,
    ).frames
    taus = torch.tensor(taus)
    torch.testing.assert_close(edit.wrapper.clock(edit.wrapper.sigmas[:steps].float()), taus, rtol=0, atol=1e-6)
    ramp = change[(change > 0) & (change < 1)].unique()
    assert (ramp[:, None] - taus[None]).abs().min() > 1e-5  # no strength where the two could round apart
    assert len({int((s >= taus).int().argmax()) for s in ramp if (s >= taus).any()}) >= 2  # graded in time
    kept, changed = (change == 0).expand_as(latent), (change == 1).expand_as(latent)
    # The map moves: each latent frame keeps another set of pixels.
    assert len({int(frame.sum()) for frame in kept[0, 0]}) == 3
    torch.testing.assert_close(expected[kept], latent[kept], rtol=0, atol=1e-5)
    assert (expected[changed] - latent[changed]).abs().mean() > 0.05
    error = (edit.result - expected).abs().max() / expected.abs().max()
    assert error < TOLERANCE, error


# Every sampler, shared out among the three folders (each runs its own network).
FOLDERS = ("wan", "wan-ti2v", "wan-a14b")
CASES = [(FOLDERS[i % 3], sampler) for i, sampler in enumerate(SAMPLERS)]


@pytest.mark.parametrize("folder, sampler", CASES)
def test_every_sampler_keeps_frozen_pixels_in_every_latent_frame(folder: str, sampler: str, tiny_family) -> None:
    pipe = loaded(tiny_family(folder))
    latent = pipe.encode(clip())
    per_frame = moving_map(FRAMES, latent.shape[-2:])
    edit = differential_edit(
        pipe.denoiser_for(latent), latent, per_frame, sampler=sampler, steps=None if sampler in OWN_STEPS else 2, schedule="model",
        extra_args=pipe.extra_args("a cat", "", 1.0), seed=0,
    )
    change = pooled(per_frame, 4)
    assert torch.isfinite(edit.result).all()
    for frame in range(latent.shape[2]):
        kept, changed = change[frame] == 0, change[frame] == 1
        assert kept.any() and changed.any()
        torch.testing.assert_close(edit.result[0, :, frame][:, kept], latent[0, :, frame][:, kept], atol=1e-5, rtol=0)
        assert (edit.result[0, :, frame][:, changed] - latent[0, :, frame][:, changed]).abs().mean() > 0.02


def test_the_family_is_told_from_model_index(tiny_family) -> None:
    for folder in FOLDERS:
        index = json.loads((tiny_family(folder) / "model_index.json").read_text())
        assert family_of_index(index, folder) is Wan
        source = find_model(str(tiny_family(folder)))
        assert source.family is Wan and source.frames_per_latent == 4
    assert Builtin.frames_per_latent == 1 and find_model("builtin").frames_per_latent == 1  # it edits clips frame for frame
    with pytest.raises(InputError, match="a WanImageToVideoPipeline folder, which is not supported; supported: .*Wan 2.1/2.2"):
        family_of_index({"_class_name": "WanImageToVideoPipeline"}, "i2v")
    pipe = loaded(tiny_family("wan-a14b"))
    assert len(pipe.denoising.experts) == 2 and pipe.description.startswith("Wan 2.1/2.2, text-to-video")
    assert (pipe.steps, pipe.cfg, pipe.frames_per_latent) == (50, 5.0, 4)
    assert len(loaded(tiny_family("wan")).denoising.experts) == 1
    assert (loaded(tiny_family("wan")).native_side, loaded(tiny_family("wan-ti2v")).native_side) == (640, 960)


def test_an_a14b_folder_without_its_second_expert_is_refused(tiny_family, tmp_path) -> None:
    folder = shutil.copytree(tiny_family("wan-a14b"), tmp_path / "model")
    shutil.rmtree(folder / "transformer_2")
    with pytest.raises(InputError, match="without transformer_2/"):
        load_pipeline(folder)


@pytest.mark.parametrize("pipeline", ["WanVACEPipeline", "WanImageToVideoPipeline"])
def test_vace_and_image_to_video_folders_are_refused_by_name(pipeline: str, tiny_family, tmp_path) -> None:
    """Their transformers take more than the latent (control frames and masks; an image's
    latent and encoding), which this path does not build: one error naming the pipeline."""
    folder = shutil.copytree(tiny_family("wan"), tmp_path / "model")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": pipeline}))
    with pytest.raises(InputError, match=f"a {pipeline} folder, which is not supported; supported: .*Wan 2.1/2.2"):
        load_pipeline(folder)


@pytest.mark.parametrize("folder", ["wan", "wan-ti2v"])
def test_fit_takes_frames_and_gives_frames_back(folder: str, tiny_family) -> None:
    """Frames (9, 40, 24, 3) -> a latent of 3 frames at the size the network takes
    (48 x 32 or 32 x 32 ... in pixels), decoded to (9, 40, 24, 3); one image -> one latent frame -> (40, 24, 3)."""
    pipe = loaded(tiny_family(folder))
    frames = np.stack([np.asarray(Image.fromarray(frame).resize((24, 40))) for frame in clip()])
    fitted = pipe.fit(frames)
    factor = pipe.factor
    height, width = pipe.size(40, 24)
    assert fitted.latent.shape == (1, pipe.vae.config.z_dim, 3, height // factor, width // factor)
    assert fitted.decode(fitted.latent).shape == (9, 40, 24, 3)
    assert fitted.decode(fitted.latent).dtype == np.uint8
    image = pipe.fit(frames[0])
    assert image.latent.shape == (1, pipe.vae.config.z_dim, 1, height // factor, width // factor)
    assert image.decode(image.latent).shape == (40, 24, 3)
    # The clip's first frame is encoded alone (the causal VAE): as the image is.
    torch.testing.assert_close(fitted.latent[:, :, :1], image.latent, rtol=1e-4, atol=1e-4)
    assert fitted.extra_args("a cat", "", 2.0)["cond"]["text"].shape == (1, 512, 16)


def test_frame_counts_and_shapes_are_checked(tiny_family) -> None:
    pipe = loaded(tiny_family("wan"))
    for count in (2, 6, 10):
        with pytest.raises(ValueError, match=rf"frames: {count} given; .* 1 \+ 4k frames"):
            pipe.fit(clip(count))
    with pytest.raises(InputError, match="cfg_2=2.0: a second expert's scale"):
        pipe.extra_args("a cat", "", 3.0, cfg_2=2.0)
    image_model = load_pipeline(tiny_family("zimage-turbo"))
    assert image_model.frames_per_latent is None
    with pytest.raises(ValueError, match=r"frames of shape \(9, 32, 96, 3\) given to Z-Image, an image model"):
        image_model.fit(clip())


def test_vae_tiling_reaches_the_wan_vae(tiny_family) -> None:
    """vae_tiling= turns on the Wan VAE's own tiling: a clip wider than a tile encodes and
    decodes tile by tile, to the same shapes and close to the untiled latent."""
    pipe = load_pipeline(tiny_family("wan"), vae_tiling=True)
    assert pipe.vae.use_tiling
    pipe.vae.enable_tiling(tile_sample_min_height=32, tile_sample_min_width=32, tile_sample_stride_height=16, tile_sample_stride_width=16)
    frames = clip(5)
    tiled = pipe.fit(frames)
    assert tiled.latent.shape == (1, 4, 2, 4, 12)
    assert tiled.decode(tiled.latent).shape == (5, *SIZE, 3)
    whole = loaded(tiny_family("wan")).encode(frames)
    assert not torch.equal(tiled.latent, whole)  # tiles were blended
    assert math.isfinite(float(tiled.latent.abs().max()))


def test_vae_tiling_bounds_the_wan_vaes_largest_activation(tiny_family) -> None:
    """vae_tiling=True alone (diffusers' tiles: 256 pixels, stride 192) tiles both ways,
    through encode and decode: on a 512 x 512 frame (a 3 x 3 grid of tiles) the largest
    activation of the encoder and of the decoder is one 256 x 256 tile's, where untiled
    it is about four times that (the stride-2 convolutions pad by a pixel)."""
    plain, tiled = loaded(tiny_family("wan")), load_pipeline(tiny_family("wan"), vae_tiling=True)
    g = torch.Generator().manual_seed(0)
    frame, latent = torch.rand(1, 3, 1, 512, 512, generator=g) * 2 - 1, torch.randn(1, 4, 1, 64, 64, generator=g)

    def largest(pipe, side: int) -> tuple[int, int]:
        pixels, code = frame[..., :side, :side], latent[..., : side // 8, : side // 8]
        return largest_output(pipe.vae.encoder, lambda: pipe.encode(pixels)), largest_output(pipe.vae.decoder, lambda: pipe.decode(code))

    one_tile, whole = largest(plain, 256), largest(plain, 512)
    assert all(3.9 * small < large <= 4 * small for small, large in zip(one_tile, whole)), (one_tile, whole)
    assert largest(tiled, 512) == one_tile


def test_both_experts_take_the_dtype_and_the_offload(tiny_family) -> None:
    """A14B's second expert is loaded, offloaded and cast as the first: offload hooks
    both (and changes nothing beyond rounding: the offloaded weights are aligned copies,
    and some CPUs' vector kernels round by alignment), dtype= casts both."""
    folder = tiny_family("wan-a14b")
    plain = loaded(folder)
    offloaded = load_pipeline(folder, offload=True)
    assert all(hasattr(expert, "_hf_hook") for expert in offloaded.denoising.experts)
    latent = torch.zeros(plain.encode(clip(5)).shape)
    runs = [euler(pipe, latent, torch.ones(latent.shape[-2:]), 4, pipe.extra_args("a cat", "blurry", 3.0)).result for pipe in (plain, offloaded)]
    torch.testing.assert_close(*runs, atol=1e-5, rtol=0)
    assert [expert.dtype for expert in load_pipeline(folder, dtype="bf16").denoising.experts] == [torch.bfloat16] * 2


@pytest.mark.parametrize("steps", [1, 4, 50])
@pytest.mark.parametrize("shift", [3.0, 5.0, 12.0])
def test_the_schedule_is_the_unipc_flow_schedule(steps: int, shift: float) -> None:
    """Our levels, as flow times, are UniPCMultistepScheduler's with use_flow_sigmas and
    flow_shift (its first nudged below 1 by 1e-6, ours t = 1 exactly)."""
    from kdiff_differential.models.flow import FlowDenoiser

    unipc = diffusers.UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=shift)
    unipc.set_timesteps(steps)
    ours = FlowDenoiser.from_scheduler_config(lambda x, t: x, dict(unipc.config)).get_sigmas(steps)
    times = FlowDenoiser.sigma_to_t(ours)
    assert times[0] == 1 and times[-1] == 0
    torch.testing.assert_close(times[1:].float(), unipc.sigmas[1:].float(), rtol=0, atol=1e-6)
    assert abs(float(unipc.sigmas[0]) - 1) < 2e-6
