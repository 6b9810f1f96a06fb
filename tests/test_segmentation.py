"""--map-prompt with --segmenter: a soft map from text, by a tiny random CLIPSeg built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdiff_differential.cli import main
from kdiff_differential.models.clipseg import prompt_map

transformers = pytest.importorskip("transformers", reason="the diffusers extra is part of the test install")
WORDS = ("the", "sky", "face")


def save_tiny_clipseg(folder: Path) -> Path:
    """A CLIPSeg of a few thousand random weights, its processor (32 px images) and a CLIP
    tokenizer over the letters and WORDS, saved as save_pretrained writes them."""
    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for token in [*"abcdefghijklmnopqrstuvwxyz", *(f"{c}</w>" for c in "abcdefghijklmnopqrstuvwxyz"), *(f"{w}</w>" for w in WORDS)]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=16)
    images = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = transformers.CLIPSegConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2,
                         max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=16, intermediate_size=24, num_hidden_layers=3, num_attention_heads=2),
        projection_dim=16, extract_layers=(1, 2), reduce_dim=8, decoder_num_attention_heads=2, decoder_intermediate_size=16,
    )
    transformers.CLIPSegForImageSegmentation(config).save_pretrained(folder)
    transformers.CLIPSegProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def clipseg(tmp_path_factory) -> Path:
    return save_tiny_clipseg(tmp_path_factory.mktemp("segmenter") / "clipseg")


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photo")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "in.png")
    halves = np.zeros((40, 48), np.uint8)
    halves[:, 24:] = 255
    Image.fromarray(halves).save(folder / "map.png")
    return folder


def test_the_text_map_is_soft_of_the_images_size_and_depends_on_the_text(clipseg, photo):
    image = np.asarray(Image.open(photo / "in.png"))
    sky = prompt_map(image, "the sky", str(clipseg))
    assert sky.shape == (40, 48) and sky.dtype == torch.float32
    assert 0 <= sky.min() and sky.max() <= 1 and sky.std() > 0.01
    assert 0 < ((sky > 0.05) & (sky < 0.95)).float().mean()  # grey levels, not a binary mask
    assert not torch.equal(sky, prompt_map(image, "face", str(clipseg)))


def test_map_and_map_prompt_multiply(clipseg, photo):
    image = np.asarray(Image.open(photo / "in.png"))
    sky = prompt_map(image, "the sky", str(clipseg))
    halves = np.zeros((20, 24))
    halves[:, 12:] = 1  # half the image's size: stretched to it
    both = prompt_map(image, "the sky", str(clipseg), change_map=halves)
    assert torch.allclose(both[:, 26:], sky[:, 26:]) and (both[:, :22] == 0).all()


def test_the_command_line_changes_what_the_text_map_says(clipseg, photo, tmp_path):
    out = tmp_path / "out.png"
    assert main(["--image", str(photo / "in.png"), "--map", str(photo / "map.png"), "--map-prompt", "the sky",
                 "--segmenter", str(clipseg), "--out", str(out), "--steps", "3", "--quiet", "--crop", "off"]) == 0
    image = np.asarray(Image.open(photo / "in.png"))
    change = np.abs(np.asarray(Image.open(out)).astype(int) - image).max(axis=-1)
    assert (change[:, :22] == 0).all()  # --map keeps the left half, whatever the text says
    sky = prompt_map(image, "the sky", str(clipseg)).numpy()
    right = (slice(None), slice(26, None))
    # Where the text map is high the pixels change more than where it is low.
    assert change[right][sky[right] > np.median(sky[right])].mean() > change[right][sky[right] <= np.median(sky[right])].mean()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--map-prompt", "the sky"], "--map-prompt needs --segmenter"),
        (["--segmenter", "somewhere"], "--segmenter is used with --map-prompt"),
        (["--map-prompt", "the sky", "--segmenter", "./no-such-folder"], "--segmenter ./no-such-folder: no such file or folder"),
    ],
)
def test_bad_text_map_options_are_one_line(photo, tmp_path, capsys, args, words):
    assert main(["--image", str(photo / "in.png"), "--out", str(tmp_path / "out.png"), *args]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and words in error
    assert not (tmp_path / "out.png").exists()


def test_an_uncached_hub_segmenter_says_so_at_once(photo, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # no network here: nothing may be tried
    assert main(["--image", str(photo / "in.png"), "--out", str(tmp_path / "out.png"), "--map-prompt", "the sky",
                 "--segmenter", "CIDAS/clipseg-rd64-refined"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--segmenter CIDAS/clipseg-rd64-refined: not in the local Hub cache" in error
    assert "Retrying" not in error
