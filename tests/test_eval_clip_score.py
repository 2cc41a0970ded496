"""CLIP score (ldm/evaluation/clip_score.py) with a tiny random open_clip model built here."""

from __future__ import annotations

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg

from ldm.evaluation.clip_score import OpenClipScorer, clip_score


def tiny_scorer() -> OpenClipScorer:
    """A random open_clip CLIP with 32-px images, one-layer towers and 16-d embeddings, and its tokenizer."""
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=1),
    )
    return OpenClipScorer(model, open_clip.get_tokenizer("ViT-B-32"), image_size=32)


@pytest.fixture(scope="module")
def scorer() -> OpenClipScorer:
    return tiny_scorer()


def test_clip_score_is_100_times_the_clamped_cosine() -> None:
    image = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0]])
    text = torch.tensor([[2.0, 0.0], [-1.0, 0.0], [4.0, 3.0]])
    torch.testing.assert_close(clip_score(image, text), torch.tensor([100.0, 0.0, 96.0]))


def test_scorer_scores_pairs_from_its_towers(scorer: OpenClipScorer) -> None:
    images = torch.randint(0, 256, (3, 3, 48, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "a blue square", "a green triangle"]
    scores = scorer(images, prompts)
    x = F.interpolate(images.float() / 255, size=(39, 32), mode="bicubic", antialias=True).clamp(0, 1)[:, :, 3:35]
    x = (x - torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)) / torch.tensor(
        [0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)
    with torch.no_grad():
        image_embeddings = scorer.model.encode_image(x)
        text_embeddings = scorer.model.encode_text(open_clip.get_tokenizer("ViT-B-32")(prompts))
    cosine = F.cosine_similarity(image_embeddings, text_embeddings, dim=1)
    torch.testing.assert_close(scores, 100 * cosine.clamp_min(0), atol=1e-4, rtol=1e-4)
    assert scores.shape == (3,) and (scores >= 0).all() and (scores <= 100).all()


def test_scorer_rejects_bad_input(scorer: OpenClipScorer) -> None:
    with pytest.raises(ValueError, match="uint8"):
        scorer(torch.zeros(1, 3, 32, 32), ["x"])
    with pytest.raises(ValueError, match="one prompt per image"):
        scorer(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), ["x"])


def test_missing_clip_weights_are_an_error_not_random_weights(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not on this machine"):
        OpenClipScorer.from_pretrained("ViT-B-32", "laion2b_s34b_b79k")
