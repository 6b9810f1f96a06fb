"""LoRAs through diffusers' own loader, on the tiny Stable Diffusion pipeline: tiny LoRAs
(UNet attention and text encoder) in the diffusers/peft and the kohya layouts, end to
end against diffusers' pipeline with ``load_lora_weights``; scale 0; bad LoRAs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import diffusers_euler, save_tiny_sd
from PIL import Image
from safetensors.torch import load_file, save_file

from kdiff_differential import load_pipeline
from kdiff_differential.cli import main
from kdiff_differential.core.sampling import differential_edit
from kdiff_differential.errors import InputError

RANK = 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_sd(tmp_path_factory.mktemp("sd"), "epsilon")


@pytest.fixture(scope="module")
def peft_lora(folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random rank-2 LoRA on the UNet's attention and the text encoder's, saved by
    diffusers (the diffusers/peft layout)."""
    import diffusers
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    torch.manual_seed(4)
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    # peft's own injection: transformers' add_adapter wants a newer peft than diffusers does.
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], init_lora_weights=False), pipe.text_encoder)
    out = tmp_path_factory.mktemp("peft-lora")
    diffusers.StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=get_peft_model_state_dict(pipe.unet), text_encoder_lora_layers=get_peft_model_state_dict(pipe.text_encoder),
    )
    return out / "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def kohya_lora(peft_lora: Path) -> Path:
    """The same LoRA in kohya's layout (lora_unet_/lora_te_ names with underscores,
    lora_down/lora_up, alpha = rank: scale 1)."""
    tensors = {}
    for key, tensor in load_file(str(peft_lora)).items():
        part, module = key.split(".", 1)
        module, kind = module.rsplit(".lora_", 1)
        prefix = "lora_unet_" if part == "unet" else "lora_te_text_model_"
        name = prefix + module.removeprefix("text_model.").replace(".", "_")
        tensors[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = tensor
        tensors[f"{name}.alpha"] = torch.tensor(float(RANK))
    path = peft_lora.parent / "kohya.safetensors"
    save_file(tensors, str(path))
    return path


def edit(pipe, size: tuple[int, int] = (16, 20)):
    """An all-released Euler edit with a prompt, a negative and guidance."""
    latent = torch.zeros(1, 4, *size)
    args = pipe.extra_args("a red cat", "blurry", 3.0)
    return differential_edit(pipe.denoiser_for(latent), latent, torch.ones(*size), sampler="euler", steps=4, extra_args=args, seed=5)


@pytest.mark.parametrize("layout", ["peft", "kohya"])
def test_a_lora_end_to_end_equals_diffusers_load_lora_weights(layout: str, folder: Path, peft_lora: Path, kohya_lora: Path) -> None:
    import diffusers

    lora, scale = (peft_lora if layout == "peft" else kohya_lora), 0.7
    ours = edit(load_pipeline(folder, loras=[(lora, scale)]))

    def with_lora(reference) -> None:
        reference.load_lora_weights(str(lora), adapter_name="tiny")
        reference.set_adapters(["tiny"], adapter_weights=[scale])

    expected = diffusers_euler(diffusers.StableDiffusionPipeline, folder, ours, with_lora, prompt="a red cat",
                               negative_prompt="blurry", height=32, width=40, guidance_scale=3.0)
    without = edit(load_pipeline(folder)).result
    assert (without - expected).abs().mean() > 1e-2 * expected.abs().mean()  # the LoRA changed the picture
    assert (ours.result - expected).abs().max() < 1e-5 * expected.abs().max()


def test_both_layouts_fuse_to_the_same_weights(folder: Path, peft_lora: Path, kohya_lora: Path) -> None:
    peft, kohya = (load_pipeline(folder, loras=[(lora, 1.0)]) for lora in (peft_lora, kohya_lora))
    base = load_pipeline(folder)
    for name in ("network", "text_encoder"):
        modules = [p.network if name == "network" else p.family.text[name] for p in (peft, kohya, base)]
        a, b, c = (module.state_dict() for module in modules)
        assert a.keys() == b.keys() == c.keys()  # fused: no LoRA layers left behind
        assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)
        assert any(not torch.equal(a[k], c[k]) for k in a)


def test_scale_0_is_no_lora(folder: Path, peft_lora: Path) -> None:
    assert torch.equal(edit(load_pipeline(folder, loras=[(peft_lora, 0.0)])).result, edit(load_pipeline(folder)).result)


def test_the_command_line_applies_repeated_loras(folder: Path, peft_lora: Path, kohya_lora: Path, tmp_path: Path) -> None:
    image = np.random.default_rng(0).integers(0, 256, (24, 28, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "in.png")
    common = ["--model", str(folder), "--image", str(tmp_path / "in.png"), "--map", "full", "--steps", "2", "--quiet", "--composite", "none"]
    assert main([*common, "--out", str(tmp_path / "bare.png")]) == 0
    assert main([*common, "--lora", f"{peft_lora}:0.5", "--lora", str(kohya_lora), "--out", str(tmp_path / "lora.png")]) == 0
    bare, lora = (np.asarray(Image.open(tmp_path / name)).astype(int) for name in ("bare.png", "lora.png"))
    assert np.abs(bare - lora).mean() > 1


def bad_loras(peft_lora: Path, folder: Path) -> dict[str, Path]:
    tensors = load_file(str(peft_lora))
    shapes = {key: torch.zeros(t.shape[0], t.shape[1] + 3) if key.endswith("lora_A.weight") else t for key, t in tensors.items()}
    files = {"other shapes": shapes, "another family": {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": torch.zeros(2, 8),
                                                        "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": torch.zeros(8, 2)}}
    paths = {}
    for name, content in files.items():
        paths[name] = folder / f"{name.replace(' ', '-')}.safetensors"
        save_file(content, str(paths[name]))
    paths["corrupt"] = folder / "corrupt.safetensors"
    paths["corrupt"].write_bytes(peft_lora.read_bytes()[:200])
    return paths


@pytest.mark.parametrize("case", ["other shapes", "another family", "corrupt"])
def test_a_lora_that_does_not_fit_is_one_line_before_sampling(case: str, folder: Path, peft_lora: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    lora = bad_loras(peft_lora, tmp_path)[case]
    with pytest.raises(InputError, match=f"lora={lora}"):
        load_pipeline(folder, loras=[(lora, 1.0)])
    capsys.readouterr()
    status = main(["--model", str(folder), "--lora", str(lora), "--out", str(tmp_path / "x.png"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "x.png").exists()
