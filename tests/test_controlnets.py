"""ControlNets with Differential Diffusion, on tiny random Stable Diffusion 1.x modules:
end to end against diffusers' StableDiffusionControlNetPipeline (one and several
ControlNets, windows), scale 0 and an empty window (never called), kept pixels in the
written file, the built-in Canny, and bad input as one line."""

from __future__ import annotations

from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from conftest import cache_as_download, diffusers_euler, save_tiny_controlnet, save_tiny_sd, save_tiny_sdxl
from PIL import Image

from kdiff_differential import load_pipeline
from kdiff_differential.cli import main
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.core.schedules import make_sigmas
from kdiff_differential.errors import InputError
from kdiff_differential.models.controlnets import Control
from kdiff_differential.models.controlnets import canny_edges

PROMPT = {"prompt": "a red cat", "negative_prompt": "blurry", "guidance_scale": 3.0, "height": 32, "width": 40}
LATENT = (1, 4, 16, 20)


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny SD pipeline, two random ControlNets for it, and control images of other sizes."""
    root = tmp_path_factory.mktemp("controlnet")
    model = save_tiny_sd(root, "epsilon")
    rng = np.random.default_rng(0)
    for name, shape in (("wide.png", (20, 24, 3)), ("tall.png", (40, 30, 3))):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(root / name)
    return {"model": model, "one": save_tiny_controlnet(root / "one", model, 3), "two": save_tiny_controlnet(root / "two", model, 4), "root": root}


@pytest.fixture(scope="module")
def pipe(folders: dict[str, Path]):
    return load_pipeline(folders["model"], controlnets=[folders["one"], folders["two"]])


def ours(pipe, controls: list[Control], steps: int = 4, negative: str = "blurry"):
    """An all-released Euler edit with a prompt, a negative, guidance and ``controls``."""
    latent = torch.zeros(LATENT)
    denoiser = pipe.denoiser_for(latent)
    args = pipe.extra_args("a red cat", negative, 3.0, size=(32, 40), controls=controls, sigmas=make_sigmas(denoiser, steps))
    return differential_edit(denoiser, latent, torch.ones(LATENT[2:]), sampler="euler", steps=steps, extra_args=args, seed=5)


def reference(folders: dict[str, Path], edit, names: list[str], kind: str = "StableDiffusionControlNetPipeline",
              net: str = "ControlNetModel", model: str = "model", **settings) -> torch.Tensor:
    """diffusers' pipeline ``kind`` on ``folders[model]`` with the ControlNets ``names``
    (of class ``net``; a MultiControlNetModel for several) from ``edit``'s noise, over
    its steps."""
    nets = [getattr(diffusers, net).from_pretrained(folders[name]) for name in names]
    controlnet = nets[0] if len(nets) == 1 else diffusers.MultiControlNetModel(nets)

    class WithControlNet:
        @staticmethod
        def from_pretrained(folder: Path, **options):
            return getattr(diffusers, kind).from_pretrained(folder, controlnet=controlnet, **options)

    return diffusers_euler(WithControlNet, folders[model], edit, **{**PROMPT, **settings})


def images(folders: dict[str, Path], *names: str) -> list[Image.Image]:
    return [Image.open(folders["root"] / name).convert("RGB") for name in names]


def test_two_controlnets_equal_diffusers_multi_controlnet(folders: dict[str, Path], pipe) -> None:
    """Different scales, the second acting over the first half of the schedule only, and
    control images of other sizes than the output's (resized as diffusers does)."""
    root = folders["root"]
    edit = ours(pipe, [Control(str(root / "wide.png"), 0.7), Control(str(root / "tall.png"), 1.3, 0.0, 0.5)])
    expected = reference(
        folders, edit, ["one", "two"], image=images(folders, "wide.png", "tall.png"), controlnet_conditioning_scale=[0.7, 1.3],
        control_guidance_start=[0.0, 0.0], control_guidance_end=[1.0, 0.5],
    )
    plain = load_pipeline(folders["model"])
    without = differential_edit(plain.denoiser_for(torch.zeros(LATENT)), torch.zeros(LATENT), torch.ones(LATENT[2:]), sampler="euler",
                                steps=4, extra_args=plain.extra_args("a red cat", "blurry", 3.0, size=(32, 40)), seed=5).result
    assert (without - expected).abs().mean() > 0.05 * expected.abs().mean()  # the ControlNets changed the result
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


def test_one_controlnet_with_a_late_window_equals_diffusers(folders: dict[str, Path], pipe) -> None:
    """One ControlNet acting from a quarter of the schedule on; the other at scale 0."""
    root = folders["root"]
    edit = ours(pipe, [Control(str(root / "tall.png"), 0.8, 0.25, 1.0), Control(str(root / "wide.png"), 0.0)])
    expected = reference(folders, edit, ["one"], image=images(folders, "tall.png")[0], controlnet_conditioning_scale=0.8,
                         control_guidance_start=0.25, control_guidance_end=1.0)
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


@pytest.fixture(scope="module")
def xl(folders: dict[str, Path]) -> dict[str, Path]:
    """The tiny SDXL pipeline, a ControlNet and a union ControlNet for it."""
    root = folders["root"] / "xl"
    model = save_tiny_sdxl(root, "epsilon")
    plain, union = save_tiny_controlnet(root / "plain", model, 5), save_tiny_controlnet(
        root / "union", model, 6, "ControlNetUnionModel", num_trans_channel=32, num_trans_head=4, num_proj_channel=32,
    )
    return {**folders, "xl": model, "plain": plain, "union": union}


def test_sdxl_controlnet_and_union_controlnet_equal_diffusers(xl: dict[str, Path]) -> None:
    """SDXL's ControlNet and union ControlNet (mode 3) are called with the added
    conditions (pooled text, time ids) as the UNet is; each equals diffusers' SDXL
    ControlNet pipeline for it."""
    pipe = load_pipeline(xl["xl"], controlnets=[xl["plain"], xl["union"]])
    image = str(xl["root"] / "tall.png")
    settings = {"prompt": "a red cat", "negative_prompt": None, "guidance_scale": 3.0, "height": 32, "width": 40}
    plain = ours(pipe, [Control(image, 0.9, 0.0, 0.75), Control(image, 0.0, mode=3)], negative="")
    expected = reference(xl, plain, ["plain"], "StableDiffusionXLControlNetPipeline", model="xl", image=images(xl, "tall.png")[0],
                         controlnet_conditioning_scale=0.9, control_guidance_end=0.75, **settings)
    assert (plain.result - expected).abs().max() < 1e-5 * expected.abs().max()
    union = ours(pipe, [Control(image, 0.0), Control(image, 1.1, mode=3)], negative="")
    expected = reference(xl, union, ["union"], "StableDiffusionXLControlNetUnionPipeline", "ControlNetUnionModel", model="xl",
                         control_image=images(xl, "tall.png"), control_mode=3, controlnet_conditioning_scale=1.1, **settings)
    assert (plain.result - union.result).abs().mean() > 0.05 * expected.abs().mean()
    assert (union.result - expected).abs().max() < 1e-5 * expected.abs().max()
    with pytest.raises(InputError, match="union ControlNet .* needs the mode of its image, a whole number in 0..[0-9]+; got None"):
        pipe.extra_args("a cat", controls=[Control(image), Control(image)])
    with pytest.raises(InputError, match="control_mode=2: this ControlNet .ControlNetModel. has no modes"):
        pipe.extra_args("a cat", controls=[Control(image, mode=2), Control(image, mode=3)])


def test_sd3_controlnet_equals_diffusers(folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SD3's ControlNet takes the control image's latent (unshifted, as InstantX's are
    trained) and the zeroed pooled projection; ours equals diffusers'
    StableDiffusion3ControlNetPipeline. diffusers draws a sample of the VAE's posterior for
    the control latent, we take its mode; the reference is made to take the mode too."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from conftest import randomise_zeros, save_tiny_flow

    model = save_tiny_flow(tmp_path, "sd3")
    torch.manual_seed(7)
    # Two blocks: the last one takes no ControlNet residual (it updates no text stream).
    config = {key: value for key, value in diffusers.SD3Transformer2DModel.load_config(model / "transformer").items() if not key.startswith("_")}
    transformer = diffusers.SD3Transformer2DModel.from_config({**config, "num_layers": 2})
    randomise_zeros(transformer)
    transformer.save_pretrained(model / "transformer")
    net = diffusers.SD3ControlNetModel(
        sample_size=16, patch_size=2, in_channels=4, out_channels=4, num_layers=1, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=64, caption_projection_dim=16, pooled_projection_dim=64, pos_embed_max_size=16,
    )
    randomise_zeros(net)
    net.save_pretrained(tmp_path / "sd3-controlnet")
    pipe = load_pipeline(model, controlnets=[tmp_path / "sd3-controlnet"])
    latent = torch.zeros(1, 4, 16, 20)
    denoiser = pipe.denoiser_for(latent)
    sigmas = make_sigmas(denoiser, 4, "model")
    image = str(folders["root"] / "tall.png")
    args = pipe.extra_args("a red cat", "blurry", 3.0, size=(32, 40), controls=[Control(image, 0.9, 0.0, 0.75)], sigmas=sigmas)
    edit = differential_edit(denoiser, latent, torch.ones(16, 20), sampler="euler", steps=4, schedule="model", extra_args=args, seed=5)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", DiagonalGaussianDistribution.mode)
    reference = diffusers.StableDiffusion3ControlNetPipeline.from_pretrained(model, controlnet=diffusers.SD3ControlNetModel.from_pretrained(tmp_path / "sd3-controlnet"), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    expected = reference(
        latents=edit.wrapper.noise, prompt="a red cat", negative_prompt="blurry", height=32, width=40, num_inference_steps=4,
        guidance_scale=3.0, max_sequence_length=16, output_type="latent", control_image=images(folders, "tall.png")[0],
        controlnet_conditioning_scale=0.9, control_guidance_end=0.75,
    ).images
    bare = differential_edit(denoiser, latent, torch.ones(16, 20), sampler="euler", steps=4, schedule="model", seed=5,
                             extra_args=pipe.extra_args("a red cat", "blurry", 3.0, size=(32, 40), controls=[Control(image, 0.0)])).result
    assert (bare - expected).abs().mean() > 0.01 * expected.abs().mean()  # the ControlNet changed the result
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


def test_flux_union_controlnet_equals_diffusers(folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flux's (InstantX-style, union) ControlNet takes the control image's latent packed
    into tokens, its mode, the guidance input and the position ids; ours equals diffusers'
    FluxControlNetPipeline (its VAE made to take the mode, as ours does)."""
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from conftest import randomise_zeros, save_tiny_flow

    model = save_tiny_flow(tmp_path, "flux")
    torch.manual_seed(8)
    net = diffusers.FluxControlNetModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 6, 6), num_mode=4,
    )
    randomise_zeros(net)
    net.save_pretrained(tmp_path / "flux-controlnet")
    pipe = load_pipeline(model, controlnets=[tmp_path / "flux-controlnet"])
    latent = torch.zeros(1, 4, 16, 20)
    denoiser = pipe.denoiser_for(latent)
    image = str(folders["root"] / "tall.png")

    def run(scale: float):
        args = pipe.extra_args("a red cat", "", 3.0, size=(32, 40), controls=[Control(image, scale, 0.25, 1.0, mode=2)],
                               sigmas=make_sigmas(denoiser, 4, "model"))
        return differential_edit(denoiser, latent, torch.ones(16, 20), sampler="euler", steps=4, schedule="model", extra_args=args, seed=5)

    edit = run(1.2)
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    reference = diffusers.FluxControlNetPipeline.from_pretrained(model, controlnet=diffusers.FluxControlNetModel.from_pretrained(tmp_path / "flux-controlnet"), local_files_only=True)
    reference.set_progress_bar_config(disable=True)
    packed = diffusers.FluxPipeline._pack_latents(edit.wrapper.noise, 1, 4, 16, 20)
    out = reference(
        latents=packed, prompt="a red cat", height=32, width=40, num_inference_steps=4, guidance_scale=3.0, max_sequence_length=16,
        output_type="latent", control_image=images(folders, "tall.png")[0], control_mode=2, controlnet_conditioning_scale=1.2,
        control_guidance_start=0.25,
    ).images
    expected = diffusers.FluxPipeline._unpack_latents(out, 32, 40, reference.vae_scale_factor)
    assert (run(0.0).result - expected).abs().mean() > 0.01 * expected.abs().mean()  # the ControlNet changed the result
    assert (edit.result - expected).abs().max() < 1e-5 * expected.abs().max()


def test_scale_0_and_a_window_before_the_first_call_never_call_the_controlnet(folders: dict[str, Path], pipe, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    for net in pipe.controlnets:
        forward = net.forward
        monkeypatch.setattr(net, "forward", lambda *a, _f=forward, _n=net, **k: calls.append(_n) or _f(*a, **k))
    image = str(folders["root"] / "wide.png")
    plain = load_pipeline(folders["model"])
    latent = torch.zeros(LATENT)
    bare = differential_edit(plain.denoiser_for(latent), latent, torch.ones(LATENT[2:]), sampler="euler", steps=4,
                             extra_args=plain.extra_args("a red cat", "blurry", 3.0, size=(32, 40)), seed=5).result
    # Of 4 steps, a window ending at 0.2 holds none ((i + 1) / 4 > 0.2 for every step i).
    for controls in ([Control(image, 0.0), Control(image, 0.0)], [Control(image, 1.0, 0.0, 0.2), Control(image, 0.0, 0.0, 0.2)]):
        assert torch.equal(ours(pipe, controls).result, bare)
    assert calls == []
    ours(pipe, [Control(image, 1.0, 0.25, 0.75), Control(image, 0.0)])
    assert calls == [pipe.controlnets[0]] * 2  # steps 1 and 2 of 4, one guidance batch each


def test_the_command_line_keeps_kept_pixels_byte_exact_with_a_controlnet(folders: dict[str, Path], tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)
    Image.fromarray(original).save(tmp_path / "in.png")
    keep_left = np.zeros((24, 28), np.uint8)
    keep_left[:, 14:] = 255
    Image.fromarray(keep_left).save(tmp_path / "map.png")
    common = ["--model", str(folders["model"]), "--image", str(tmp_path / "in.png"), "--map", str(tmp_path / "map.png"), "--steps", "2", "--quiet"]
    control = ["--controlnet", str(folders["one"]), "--control-image", f"canny:{folders['root'] / 'tall.png'}", "--control-scale", "2"]
    assert main([*common, *control, "--out", str(tmp_path / "cn.png")]) == 0
    assert main([*common, "--out", str(tmp_path / "bare.png")]) == 0
    result, bare = (np.asarray(Image.open(tmp_path / name)) for name in ("cn.png", "bare.png"))
    assert np.array_equal(result[:, :14], original[:, :14])
    assert np.abs(result[:, 14:].astype(int) - bare[:, 14:]).mean() > 1  # the ControlNet acted where the map changes


def test_canny_gives_white_edges_on_black_around_a_square() -> None:
    image = np.zeros((32, 32, 3), np.uint8)
    image[8:24, 8:24] = 200
    edges = canny_edges(image)
    assert edges.dtype == np.uint8 and edges.shape == (32, 32, 3) and set(np.unique(edges)) == {0, 255}
    assert edges[16, 6:11, 0].max() == 255 and edges[16, 12:20].max() == 0 and edges[2:6, 2:6].max() == 0


def foreign_controlnet(folder: Path, **changes) -> Path:
    """A tiny ControlNetModel of another shape than the tiny SD UNet's (as another
    family's would be): ``changes`` to its configuration."""
    settings = dict(
        in_channels=4, block_out_channels=(32, 64), layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, conditioning_embedding_out_channels=(8, 16),
    )
    diffusers.ControlNetModel(**{**settings, **changes}).save_pretrained(folder)
    return folder


BAD = {
    "missing control image": (["--controlnet", "{one}", "--control-image", "{root}/nope.png"], "--control-image {root}/nope.png: no such file"),
    "no control image": (["--controlnet", "{one}"], "--controlnet {one}: no --control-image"),
    "image before its controlnet": (["--control-image", "{root}/wide.png", "--controlnet", "{one}"], "give --controlnet SOURCE first"),
    "not a controlnet": (["--controlnet", "{model}/unet", "--control-image", "{root}/wide.png"], "a UNet2DConditionModel (not a ControlNet)"),
    "another family's text width": (["--controlnet", "{xl}", "--control-image", "{root}/wide.png"], "its cross_attention_dim is 56, this Stable Diffusion 1.x/2.x network's 32"),
    "other channels": (["--controlnet", "{channels}", "--control-image", "{root}/wide.png"], "it takes 16 latent channels"),
    "window outside 0..1": (["--controlnet", "{one}", "--control-image", "{root}/wide.png", "--control-end", "1.5"], "--control-end: 1.5 is out of range"),
    "start after end": (["--controlnet", "{one}", "--control-image", "{root}/wide.png", "--control-start", "0.6", "--control-end", "0.4"], "0 <= start < end <= 1"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_controlnet_input_is_one_line_and_exit_2(case: str, folders: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = {key: str(value) for key, value in folders.items()}
    names["xl"] = str(foreign_controlnet(tmp_path / "xl", cross_attention_dim=56)) if case == "another family's text width" else ""
    names["channels"] = str(foreign_controlnet(tmp_path / "channels", in_channels=16)) if case == "other channels" else ""
    arguments, message = BAD[case]
    image = np.zeros((24, 28, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    capsys.readouterr()
    status = main(["--model", names["model"], "--image", str(tmp_path / "in.png"), *(a.format(**names) for a in arguments), "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert message.format(**names) in err
    assert not (tmp_path / "x.png").exists()


def test_a_hub_id_from_the_offline_cache_loads_the_same_controlnet(folders: dict[str, Path], offline_cache: Path) -> None:
    cache_as_download(folders["one"], offline_cache, "tiny/controlnet")
    by_id = load_pipeline(folders["model"], controlnets=["tiny/controlnet"]).controlnets[0].state_dict()
    by_folder = load_pipeline(folders["model"], controlnets=[folders["one"]]).controlnets[0].state_dict()
    assert by_id.keys() == by_folder.keys() and all(torch.equal(by_id[key], by_folder[key]) for key in by_id)
    with pytest.raises(InputError, match=r"controlnet=tiny/missing: not \(wholly\) in the Hub cache, and HF_HUB_OFFLINE=1"):
        load_pipeline(folders["model"], controlnets=["tiny/missing"])


def test_the_python_route_names_a_missing_control_or_sigmas(pipe) -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="one Control per ControlNet loaded, 2; got 1"):
        pipe.extra_args("a cat", controls=[Control(image)])
    with pytest.raises(ValueError, match="needs sigmas="):
        pipe.extra_args("a cat", controls=[Control(image, end=0.5), Control(image)])


def test_the_cost_script_measures_a_tiny_controlnet_on_cpu() -> None:
    from samplers.controlnet_cost import measure

    result = measure("cpu", size=32, rounds=1, tiny=True)
    ms = result["ms_per_call"]
    assert set(ms) == {"without", "with", "outside the window", "ControlNet alone"} and min(ms.values()) > 0
    assert result["added_over_controlnet_alone"] == (ms["with"] - ms["without"]) / ms["ControlNet alone"]


def test_every_sampler_runs_the_controlnet_and_keeps_kept_latents(folders: dict[str, Path], pipe) -> None:
    """The ControlNet is inside the model call, so every k-diffusion sampler gets it:
    each run differs from the one at scale 0 where the map changes, and not where it keeps."""
    from conftest import SAMPLERS

    from kdiff_differential.core.samplers import OWN_STEPS

    latent = torch.randn(LATENT, generator=torch.Generator().manual_seed(0))
    halves = torch.zeros(LATENT[2:])
    halves[:, 10:] = 1
    denoiser = pipe.denoiser_for(latent)
    image = str(folders["root"] / "wide.png")
    for sampler in SAMPLERS:
        results = []
        for scale in (0.0, 2.0):
            args = pipe.extra_args("a red cat", "", 3.0, size=(32, 40), controls=[Control(image, scale), Control(image, 0.0)])
            results.append(differential_edit(denoiser, latent, halves, sampler=sampler, steps=None if sampler in OWN_STEPS else 2,
                                             extra_args=args, seed=1).result)
        bare, controlled = results
        torch.testing.assert_close(controlled[..., :9], latent[..., :9], atol=1e-5, rtol=0, msg=sampler)
        assert (controlled[..., 11:] - bare[..., 11:]).abs().mean() > 1e-3, sampler


def test_a_control_image_is_cropped_as_the_input_is() -> None:
    """With --crop, the model sees a box of the input scaled to its size; the control image
    (of another size) is stretched to the input's, then cut and scaled the same way."""
    from kdiff_differential.stages.cropping import Region

    region = Region(top=10, left=20, height=30, width=40, size=(60, 80), work=(48, 64))
    control = np.zeros((30, 40, 3), np.uint8)
    control[5:20, 10:20] = 255  # at the input's size: rows 10..40, columns 20..40, the box's left half
    aligned = region.align(control)
    assert aligned.shape == (48, 64, 3)
    assert aligned[4:-4, 2:28].min() > 200 and aligned[:, 36:].max() < 30
    whole = Region(top=0, left=0, height=60, width=80, size=(60, 80), work=(60, 80))
    assert region.cropped and not whole.cropped and whole.align(control) is control  # uncropped: as given
