"""Where a model comes from: a Hub id through huggingface_hub's cache (offline), single
``.safetensors`` checkpoints in the original CompVis/SGM key layout, and pickles, which
are refused without being unpickled. Tiny random pipelines, nothing from a hub."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import SHA, cache_as_download, save_tiny_sd, save_tiny_sdxl
from safetensors.torch import save_file

from kdiff_differential import load_pipeline
from kdiff_differential.cli import main
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.errors import InputError
from kdiff_differential.models import default_schedule



@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd"), "epsilon")


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sdxl(tmp_path_factory.mktemp("sdxl"), "epsilon")


def edited(pipe, size: tuple[int, int] = (8, 10)) -> torch.Tensor:
    """An all-released Euler edit of a fixed latent with a prompt and guidance."""
    latent = torch.randn(1, 4, *size, generator=torch.Generator().manual_seed(3))
    args = pipe.extra_args("a red cat", "blurry", 3.0, size=(2 * size[0], 2 * size[1]))
    return differential_edit(pipe.denoiser_for(latent), latent, torch.ones(*size), sampler="euler", steps=3, extra_args=args, seed=1).result


def one_line(argv: list[str], capsys: pytest.CaptureFixture, tmp_path: Path) -> str:
    capsys.readouterr()  # what the test wrote before (diffusers' loading bars)
    status = main([*argv, "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()
    return err


def test_a_hub_id_loads_from_the_cache_offline_as_the_folder(sd_folder: Path, offline_cache: Path) -> None:
    cache_as_download(sd_folder, offline_cache, "tiny-org/tiny-sd")
    by_id, by_folder = load_pipeline("tiny-org/tiny-sd"), load_pipeline(sd_folder)
    pinned = load_pipeline(f"tiny-org/tiny-sd@{SHA}")
    expected = edited(by_folder)
    assert torch.equal(edited(by_id), expected) and torch.equal(edited(pinned), expected)
    assert by_id.family.name == "Stable Diffusion 1.x/2.x"


@pytest.mark.parametrize("given, says", [
    ("tiny-org/not-there", "in the Hub cache, and HF_HUB_OFFLINE=1"),
    ("./not/there", "no such file or folder"),
])
def test_an_unknown_id_offline_is_one_line(given: str, says: str, offline_cache: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    assert says in one_line(["--model", given], capsys, tmp_path)


@pytest.fixture
def unreachable_hub(offline_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The empty cache, HF_HUB_OFFLINE unset, and a Hub endpoint that refuses connections."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    return offline_cache


def test_an_uncached_id_without_the_hub_fails_at_once(unreachable_hub: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    err = one_line(["--model", "tiny-org/not-there"], capsys, tmp_path)
    assert "not (wholly) in the local Hub cache, and the Hub (http://127.0.0.1:9) cannot be reached" in err
    assert time.perf_counter() - start < 10  # huggingface_hub's five retries took about 23 s


def test_a_cached_id_without_the_hub_loads_from_the_cache(sd_folder: Path, unreachable_hub: Path) -> None:
    cache_as_download(sd_folder, unreachable_hub, "tiny-org/tiny-sd")
    assert torch.equal(edited(load_pipeline("tiny-org/tiny-sd")), edited(load_pipeline(sd_folder)))


# What diffusers' single-file loader maps from, inverted: original (CompVis/SGM) name
# fragments for diffusers' UNet resnets and VAE attention layers.
RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
          "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def original_unet(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet's tensors under their CompVis names (model.diffusion_model.*)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    config, per = unet.config, unet.config.layers_per_block + 1
    top = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
    attended = [hasattr(block, "attentions") for block in unet.up_blocks]
    out = {}
    for key, tensor in unet.state_dict().items():
        p = key.split(".")
        if key in top:
            name = top[key]
        elif p[0] == "down_blocks" and p[2] == "downsamplers":
            name = f"input_blocks.{(int(p[1]) + 1) * per}.0.op.{p[-1]}"
        elif p[0] == "down_blocks":
            layer = int(p[1]) * per + int(p[3]) + 1
            name = f"input_blocks.{layer}.{0 if p[2] == 'resnets' else 1}." + _resnet(p[2], p[4:])
        elif p[0] == "mid_block":
            name = f"middle_block.{2 * int(p[2]) if p[1] == 'resnets' else 1}." + _resnet(p[1], p[3:])
        elif p[0] == "up_blocks" and p[2] == "upsamplers":
            block = int(p[1])
            name = f"output_blocks.{block * per + per - 1}.{2 if attended[block] else 1}.conv.{p[-1]}"
        elif p[0] == "up_blocks":
            name = f"output_blocks.{int(p[1]) * per + int(p[3])}.{0 if p[2] == 'resnets' else 1}." + _resnet(p[2], p[4:])
        else:
            raise AssertionError(f"no original name for {key}")
        out["model.diffusion_model." + name] = tensor
    assert config.layers_per_block >= 1
    return out


def _resnet(kind: str, rest: list[str]) -> str:
    return ".".join([RESNET[rest[0]], *rest[1:]] if kind == "resnets" else rest)


def original_vae(vae) -> dict[str, torch.Tensor]:
    """A diffusers VAE's tensors under their CompVis names (first_stage_model.*)."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top, blocks = DIFFUSERS_TO_LDM_MAPPING["vae"], len(vae.config.up_block_types)
    out = {}
    for key, tensor in vae.state_dict().items():
        side, p = key.split(".")[0], key.split(".")[1:]
        if key in top:
            name = top[key]
        elif p[0] == "down_blocks" and p[2] == "downsamplers":
            name = f"{side}.down.{p[1]}.downsample.{'.'.join(p[4:])}"
        elif p[0] == "down_blocks":
            name = f"{side}.down.{p[1]}.block.{p[3]}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
        elif p[0] == "up_blocks" and p[2] == "upsamplers":
            name = f"{side}.up.{blocks - 1 - int(p[1])}.upsample.{'.'.join(p[4:])}"
        elif p[0] == "up_blocks":
            name = f"{side}.up.{blocks - 1 - int(p[1])}.block.{p[3]}." + ".".join(p[4:]).replace("conv_shortcut", "nin_shortcut")
        elif p[0] == "mid_block" and p[1] == "resnets":
            name = f"{side}.mid.block_{int(p[2]) + 1}." + ".".join(p[3:]).replace("conv_shortcut", "nin_shortcut")
        elif p[0] == "mid_block":
            rest = ".".join(p[3:])
            for new, old in VAE_ATTENTION.items():
                rest = rest.replace(new + ".", old + ".") if rest.startswith(new + ".") else rest
            name = f"{side}.mid.attn_1.{rest}"
            tensor = tensor[..., None, None] if tensor.ndim == 2 else tensor  # 1x1 convolutions there
        else:
            raise AssertionError(f"no original name for {key}")
        out["first_stage_model." + name] = tensor
    return out


def original_clip(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's tensors as the original checkpoints keep them:
    ``prefix`` + text_model.* (OpenAI CLIP-L)."""
    return {prefix + ("" if key.startswith("text_model.") else "text_model.") + key: t for key, t in encoder.state_dict().items()}


def original_open_clip(encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text model with projection as OpenCLIP keeps it (SDXL's second encoder):
    resblocks with q, k, v stacked into in_proj, the projection transposed."""
    from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING

    top = DIFFUSERS_TO_LDM_MAPPING["openclip"]["layers"]
    renames = {"text_model.encoder.layers.": "transformer.resblocks.", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
               ".fc1.": ".c_fc.", ".fc2.": ".c_proj.", ".self_attn.": ".attn."}
    state, out = encoder.state_dict(), {}
    for key, tensor in state.items():
        if key in top:
            out[prefix + top[key]] = tensor.T.contiguous() if key == "text_projection.weight" else tensor
            continue
        name = key
        for new, old in renames.items():
            name = name.replace(new, old)
        for part in ("q_proj", "k_proj", "v_proj"):
            if f".attn.{part}." in name:
                kind = name.rsplit(".", 1)[1]
                stacked = name.replace(f".attn.{part}.{kind}", f".attn.in_proj_{kind}")
                out[prefix + stacked] = torch.cat([state[key.replace(part, p)] for p in ("q_proj", "k_proj", "v_proj")])
                break
        else:
            out[prefix + name] = tensor
    return out


def write_original(folder: Path, family: str, path: Path) -> Path:
    """The diffusers folder as one original-layout checkpoint file."""
    import diffusers

    kind = diffusers.StableDiffusionXLPipeline if family == "sdxl" else diffusers.StableDiffusionPipeline
    pipe = kind.from_pretrained(folder, local_files_only=True)
    tensors = {**original_unet(pipe.unet), **original_vae(pipe.vae)}
    if family == "sdxl":
        tensors.update(original_clip(pipe.text_encoder, "conditioner.embedders.0.transformer."))
        tensors.update(original_open_clip(pipe.text_encoder_2, "conditioner.embedders.1.model."))
    else:
        tensors.update(original_clip(pipe.text_encoder, "cond_stage_model.transformer."))
    save_file({key: t.contiguous() for key, t in tensors.items()}, str(path))
    return path


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_a_single_file_in_the_original_layout_loads_as_its_folder(family: str, sd_folder: Path, sdxl_folder: Path, tmp_path: Path) -> None:
    folder = sdxl_folder if family == "sdxl" else sd_folder
    checkpoint = write_original(folder, family, tmp_path / "model.safetensors")
    # The configuration without weights: every weight must come from the file.
    config = tmp_path / "config"
    shutil.copytree(folder, config, ignore=shutil.ignore_patterns("*.safetensors"))
    single, reference = load_pipeline(checkpoint, config=config), load_pipeline(folder)
    assert single.family.name == reference.family.name
    assert default_schedule(str(checkpoint)) == "karras"  # the family from the file's tensor names alone
    parts = ["network", "vae"]
    for name in parts:
        ours, theirs = getattr(single, name).state_dict(), getattr(reference, name).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), name
    for name, encoder in reference.family.text.items():
        if isinstance(encoder, torch.nn.Module):
            ours, theirs = single.family.text[name].state_dict(), encoder.state_dict()
            assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    expected = edited(reference)
    assert (edited(single) - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_a_network_only_file_takes_the_other_parts_from_its_configuration(sd_folder: Path, tmp_path: Path) -> None:
    """A file with the UNet alone (as SD3 and Flux files often hold the transformer alone):
    the network from the file, the VAE and text encoder from --config's folder."""
    from safetensors.torch import load_file

    whole = load_file(str(write_original(sd_folder, "sd", tmp_path / "whole.safetensors")))
    unet = {key: t for key, t in whole.items() if key.startswith("model.diffusion_model.")}
    save_file(unet, str(tmp_path / "unet.safetensors"))
    # The configuration's UNet weights are another model's: the file's must win.
    import diffusers

    config = tmp_path / "config"
    shutil.copytree(sd_folder, config)
    torch.manual_seed(9)
    other = diffusers.UNet2DConditionModel.from_config(diffusers.UNet2DConditionModel.load_config(config / "unet"))
    other.save_pretrained(config / "unet")
    assert not torch.equal(edited(load_pipeline(config)), edited(load_pipeline(sd_folder)))
    single, reference = load_pipeline(tmp_path / "unet.safetensors", config=config), load_pipeline(sd_folder)
    assert single.family.name == "Stable Diffusion 1.x/2.x"
    expected = edited(reference)
    assert (edited(single) - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_a_single_file_offline_without_a_configuration_is_one_line(sd_folder: Path, offline_cache: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    checkpoint = write_original(sd_folder, "sd", tmp_path / "model.safetensors")
    err = one_line(["--model", str(checkpoint)], capsys, tmp_path)
    assert "give --config" in err and "HF_HUB_OFFLINE=1" in err


def test_a_single_file_with_another_familys_configuration_is_one_line(sd_folder: Path, sdxl_folder: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    checkpoint = write_original(sd_folder, "sd", tmp_path / "model.safetensors")
    err = one_line(["--model", str(checkpoint), "--config", str(sdxl_folder)], capsys, tmp_path)
    assert "not a Stable Diffusion 1.x/2.x pipeline" in err


def test_files_no_family_recognises_are_one_line(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    save_file({"some.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    (tmp_path / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{nonsense")
    assert "no model family recognises" in one_line(["--model", str(tmp_path / "other.safetensors")], capsys, tmp_path)
    assert "cannot read the checkpoint" in one_line(["--model", str(tmp_path / "broken.safetensors")], capsys, tmp_path)


class Payload:
    """Unpickling this creates the file ``marker``: what a malicious checkpoint could do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".bin"])
def test_a_pickle_is_refused_without_unpickling_it(suffix: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    checkpoint = tmp_path / f"model{suffix}"
    checkpoint.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    err = one_line(["--model", str(checkpoint)], capsys, tmp_path)
    assert "refused" in err and "--allow-pickle" in err
    err = one_line(["--model", "tiny-org/x", "--lora", str(checkpoint)], capsys, tmp_path)
    assert "refused" in err and "--allow-pickle" in err
    with pytest.raises(InputError, match="refused"):
        load_pipeline(checkpoint)
    # Opted in, torch's weights-only unpickler still refuses to run the payload.
    assert "cannot read the checkpoint" in one_line(["--model", str(checkpoint), "--allow-pickle"], capsys, tmp_path)
    assert not marker.exists()


def test_a_folder_with_pickled_weights_only_is_refused(sd_folder: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(sd_folder, folder)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    assert "unet/ has its weights in a pickle file only; refused" in one_line(["--model", str(folder)], capsys, tmp_path)


@pytest.mark.parametrize("argv, says", [
    (["--lora", "x.safetensors"], "--lora: for a diffusers model"),
    (["--config", "folder", "--offload"], "--config, --offload: for a diffusers model"),
    (["--model", "tiny-org/x", "--lora", "x.safetensors:strong"], "the scale 'strong' is not a number"),
    (["--model", "tiny-org/x", "--lora", "missing.safetensors:0.5"], "--lora missing.safetensors: no such file"),
    (["--model", "tiny-org/x", "--config", "tiny-org/y"], "--config tiny-org/y is for single-file checkpoints"),
])
def test_bad_model_options_are_one_line(argv: list[str], says: str, capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert says in one_line(argv, capsys, tmp_path)


def test_a_bad_config_is_named_as_config(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    save_file({"some.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    err = one_line(["--model", str(tmp_path / "model.safetensors"), "--config", "./no/such/folder"], capsys, tmp_path)
    assert "--config ./no/such/folder: no such file or folder" in err
    err = one_line(["--model", str(tmp_path / "model.safetensors"), "--config", str(tmp_path / "model.safetensors")], capsys, tmp_path)
    assert "not a file" in err


def test_the_help_and_the_readme_list_the_registrys_families(capsys: pytest.CaptureFixture) -> None:
    from kdiff_differential.models.families import FAMILIES

    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert all(family.name in text for family in FAMILIES)
    readme = (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text()
    lines = readme.splitlines()
    start = lines.index("| family (`_class_name`) | network | conditioning |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line.split("|")[1].strip())
    assert all(any(row.startswith(family.name + " ") for row in rows) for family in FAMILIES)


def test_each_family_owns_its_own_index_and_no_other() -> None:
    from kdiff_differential.models.families import FAMILIES

    indexes = {
        "Stable Diffusion 1.x/2.x": {"_class_name": "StableDiffusionInpaintPipeline", "text_encoder": ["transformers", "CLIPTextModel"]},
        "Stable Diffusion XL": {"_class_name": "StableDiffusionXLPipeline", "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "X"]},
        "Stable Diffusion XL refiner": {"_class_name": "StableDiffusionXLImg2ImgPipeline", "text_encoder": [None, None], "text_encoder_2": ["transformers", "X"]},
        "Stable Diffusion 3/3.5": {"_class_name": "StableDiffusion3Pipeline"},
        "Flux.1": {"_class_name": "FluxPipeline"},
        "FLUX.1 Fill": {"_class_name": "FluxFillPipeline"},
        "FLUX.1 Kontext": {"_class_name": "FluxKontextPipeline"},
        "Chroma": {"_class_name": "ChromaPipeline"},
        "Z-Image": {"_class_name": "ZImagePipeline"},
        "FLUX.2 Klein": {"_class_name": "Flux2KleinPipeline"},
        "Qwen-Image": {"_class_name": "QwenImagePipeline"},
        "Qwen-Image-Edit": {"_class_name": "QwenImageEditPipeline"},
        "Wan 2.1/2.2": {"_class_name": "WanPipeline"},
    }
    assert sorted(indexes) == sorted(family.name for family in FAMILIES)
    for name, index in indexes.items():
        assert [family.name for family in FAMILIES if family.owns(index)] == [name]

