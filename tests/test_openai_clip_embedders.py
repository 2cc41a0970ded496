"""The original latent-diffusion OpenAI CLIP conditioners (FrozenCLIPTextEmbedder, FrozenClipImageEmbedder) on
open_clip: tokenisation, normalisation, preprocessing by hand, the original's numbers, the ViT-L/14 key manifest,
freezing, the assignable ``device`` and the missing-weights warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F

import ldm.modules.encoders.clip_image as clip_image
import ldm.modules.encoders.openai_clip_embedders as openai_embedders
from ldm.modules.encoders import modules
from ldm.modules.encoders.base import AbstractEncoder
from ldm.modules.encoders.clip_tokenizer import offline_clip_tokenizer
from ldm.modules.encoders.openai_clip_embedders import (
    FrozenClipImageEmbedder,
    FrozenCLIPTextEmbedder,
    open_clip_arch,
    openai_weights_path,
)
from tests.test_openclip_embedders import ORIGINAL_OPENAI, _tiny_openai_clip, manifest_of, recipe, sd2_manifest

PROMPTS = ["a photo of a cat", "", "An astronaut riding a horse"]
LONG = " ".join(f"word{i}" for i in range(60))  # 170 BPE tokens: more than the 77-token context
SOT, EOT = 49406, 49407
TINY_ARCH = "ldm-test-tiny-openai"
TINY_CONFIG = {  # the architecture of tests.test_openclip_embedders._tiny_openai_clip, under an open_clip name
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1},
}


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No hub, and an empty ``clip.load`` cache in a temporary folder (returned)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = tmp_path / "clip-cache"
    cache.mkdir()
    monkeypatch.setattr(clip_image, "OPENAI_CACHE", cache)
    return cache


@pytest.fixture
def weights_file(tmp_path: Path) -> Path:
    """A tiny OpenAI CLIP state dict with the recipe weights the original's pinned numbers were computed with."""
    shapes = {k: tuple(v.shape) for k, v in _tiny_openai_clip().state_dict().items()}
    path = tmp_path / "tiny-openai.pt"
    torch.save(recipe(shapes, 62000), path)
    return path


def _hand_tokens(captions: list[str]) -> torch.Tensor:
    """``clip.tokenize``'s ids from the BPE shipped with ldm: pad with 0 after ``<|endoftext|>``."""
    ids = offline_clip_tokenizer()(captions, truncation=True, max_length=77, padding="max_length")["input_ids"]
    rows = []
    for row in ids:
        end = row.index(EOT)
        rows.append(row[: end + 1] + [0] * (77 - end - 1))
    return torch.tensor(rows)


def test_openai_names_map_to_open_clip_architectures_and_cache_files(offline: Path) -> None:
    expected = {
        "ViT-L/14": ("ViT-L-14", "ViT-L-14.pt"),
        "ViT-B/32": ("ViT-B-32", "ViT-B-32.pt"),
        "ViT-B/16": ("ViT-B-16", "ViT-B-16.pt"),
        "ViT-L/14@336px": ("ViT-L-14-336", "ViT-L-14-336px.pt"),
        "RN50": ("RN50", "RN50.pt"),
        "RN50x64": ("RN50x64", "RN50x64.pt"),
        "ViT-L-14": ("ViT-L-14", "ViT-L-14.pt"),
    }
    for name, (arch, file_name) in expected.items():
        assert open_clip_arch(name) == arch
        assert openai_weights_path(arch) == offline / file_name
    with pytest.raises(ValueError, match="'ViT-Q/99' is neither an OpenAI CLIP model name"):
        FrozenCLIPTextEmbedder("ViT-Q/99")


def test_text_embedder_is_unit_norm_and_encode_repeats(weights_file: Path) -> None:
    embedder = FrozenCLIPTextEmbedder(str(weights_file), n_repeat=3)
    ids = _hand_tokens(PROMPTS)
    assert torch.equal(embedder.tokenize(PROMPTS), ids)
    z = embedder(PROMPTS)
    raw = embedder.model.encode_text(ids)
    assert z.shape == (3, 32) and z.grad_fn is None
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(z, raw / raw.norm(dim=-1, keepdim=True))
    repeated = embedder.encode(PROMPTS)
    assert repeated.shape == (3, 3, 32)
    for k in range(3):
        assert torch.equal(repeated[:, k], z)
    unnormalized = FrozenCLIPTextEmbedder(str(weights_file), normalize=False)
    plain = unnormalized(PROMPTS)
    torch.testing.assert_close(plain, raw)
    assert not torch.allclose(plain.norm(dim=-1), torch.ones(3))
    assert unnormalized.encode(PROMPTS).shape == (3, 1, 32)


def test_text_embedder_truncates_long_captions(weights_file: Path) -> None:
    embedder = FrozenCLIPTextEmbedder(str(weights_file))
    ids = embedder.tokenize([LONG, "a cat"])
    assert ids.shape == (2, 77) and ids[0, 0] == SOT and ids[0, -1] == EOT and ids[0].ne(0).all()
    assert embedder([LONG]).shape == (1, 32)


def test_image_preprocessing_equals_resize_and_normalize_by_hand(weights_file: Path) -> None:
    embedder = FrozenClipImageEmbedder(str(weights_file))  # antialias=False: the original's default
    assert embedder.antialias is False
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 300, 260, generator=g) * 2 - 1
    unit = (F.interpolate(x, size=(224, 224), mode="bicubic", align_corners=True) + 1) / 2
    mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
    std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    by_hand = (unit - mean) / std
    torch.testing.assert_close(embedder.preprocess(x), by_hand)
    z = embedder(x)
    assert z.shape == (2, 32) and z.grad_fn is None
    torch.testing.assert_close(z, embedder.model.encode_image(by_hand))
    big = torch.rand(1, 3, 672, 672, generator=g) * 2 - 1  # shrunk 3x: antialiasing blurs with sigma = 1
    smoothed = FrozenClipImageEmbedder(str(weights_file), antialias=True).preprocess(big)
    assert smoothed.std() < 0.5 * embedder.preprocess(big).std()


def test_image_embedder_reproduces_the_originals_numbers(weights_file: Path) -> None:
    """With ``antialias=True`` the original's preprocessing is that of SD 2.x's ClipImageEmbedder, whose outputs on
    these weights and inputs were computed with the openai-clip package and kornia."""
    embedder = FrozenClipImageEmbedder(str(weights_file), antialias=True)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(3, 3, 300, 260, generator=g) * 2 - 1
    torch.testing.assert_close(embedder(x)[:, :6], torch.tensor(ORIGINAL_OPENAI), rtol=1e-4, atol=1e-5)


def test_full_size_keys_match_the_openai_vit_l14_state_dict(caplog: pytest.LogCaptureFixture) -> None:
    """``model.*`` holds both towers under OpenAI's key names, as ``clip.load("ViT-L/14")`` gave them (the unCLIP-L
    manifest records that state dict); a meta build reads no file and warns about nothing."""
    expected = sd2_manifest("sd-v2-1-stable-unclip-l-inference.tsv", "embedder.")
    with caplog.at_level(logging.WARNING), torch.device("meta"):
        image = FrozenClipImageEmbedder("ViT-L/14")
        text = FrozenCLIPTextEmbedder()
        assert text(["a cat"]).shape == (1, 768) and text.encode(["a cat"]).shape == (1, 1, 768)
        assert image(torch.zeros(1, 3, 256, 256)).shape == (1, 768)
    assert manifest_of(image) == expected
    assert manifest_of(text) == expected
    assert [r for r in caplog.records if r.name == openai_embedders.__name__] == []


def test_frozen_and_device_is_a_plain_attribute(weights_file: Path) -> None:
    default = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    for embedder, data in (
        (FrozenCLIPTextEmbedder(str(weights_file)), ["a cat"]),
        (FrozenClipImageEmbedder(str(weights_file), jit=True), x),
    ):
        assert embedder.device == default
        assert not any(p.requires_grad for p in embedder.parameters())
        embedder.train()
        assert not embedder.training and not embedder.model.training
        assert not any(m.training for m in embedder.modules())
        before = embedder(data)
        embedder.device = "mps"  # what clients assign is kept; inputs still follow the weights
        assert embedder.device == "mps"
        assert torch.equal(embedder(data), before)


def test_missing_openai_file_builds_random_weights_with_one_warning(
    tmp_path: Path, offline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / f"{TINY_ARCH}.json"
    config.write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(str(config))
    with caplog.at_level(logging.WARNING, logger=openai_embedders.__name__):
        random_text = FrozenCLIPTextEmbedder(TINY_ARCH)
    (record,) = [r for r in caplog.records if r.name == openai_embedders.__name__]
    message = record.getMessage()
    assert "\n" not in message and "RANDOM weights" in message
    assert str(offline / f"{TINY_ARCH}.pt") in message and "FrozenCLIPTextEmbedder" in message
    assert random_text([PROMPTS[0]]).shape == (1, 32)
    # the file, where the warning said, in half precision as OpenAI ships it (clip.load rounds weights to float16)
    half = {k: v.half().float() if v.is_floating_point() else v for k, v in random_text.model.state_dict().items()}
    torch.save(half, offline / f"{TINY_ARCH}.pt")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=openai_embedders.__name__):
        loaded = FrozenClipImageEmbedder(TINY_ARCH)
    assert [r for r in caplog.records if r.name == openai_embedders.__name__] == []
    assert loaded.model.state_dict().keys() == half.keys()
    for key, value in half.items():
        assert torch.equal(loaded.model.state_dict()[key], value)


def test_reexported_from_modules_as_plain_modules() -> None:
    assert modules.FrozenCLIPTextEmbedder is FrozenCLIPTextEmbedder
    assert modules.FrozenClipImageEmbedder is FrozenClipImageEmbedder
    for cls in (FrozenCLIPTextEmbedder, FrozenClipImageEmbedder):  # nn.Modules in the original, not AbstractEncoders
        assert issubclass(cls, torch.nn.Module) and not issubclass(cls, AbstractEncoder)
