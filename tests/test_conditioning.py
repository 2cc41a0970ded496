"""ldm.models.diffusion.conditioning: wrapper keywords, batch slicing and conditioning dropout."""

from __future__ import annotations

import math

import pytest
import torch

from ldm.models.diffusion.conditioning import as_wrapper_kwargs, drop_conditioning, rescale_bboxes, take_batch


def test_as_wrapper_kwargs_names_the_conditioning_as_the_original():
    c = torch.ones(2, 3)
    assert as_wrapper_kwargs(c, "concat") == {"c_concat": [c]}
    assert as_wrapper_kwargs(c, "crossattn") == {"c_crossattn": [c]}
    assert as_wrapper_kwargs([c, c], "adm") == {"c_crossattn": [c, c]}
    hybrid = {"c_concat": [c], "c_crossattn": [c]}
    assert as_wrapper_kwargs(hybrid, "hybrid") == hybrid


def test_take_batch_slices_tensors_lists_and_dicts():
    c = torch.arange(10).reshape(5, 2)
    assert take_batch(c, 2).tolist() == [[0, 1], [2, 3]]
    assert [x.shape[0] for x in take_batch([c, c], 3)] == [3, 3]
    assert take_batch({"c_crossattn": [c]}, 1)["c_crossattn"][0].tolist() == [[0, 1]]
    assert take_batch(None, 4) is None


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5])
def test_drop_conditioning_rate_on_class_labels(p):
    """The dropped fraction of n = 20 000 labels is within 5 standard errors √(p(1 − p)/n) of p."""
    torch.manual_seed(0)
    n = 20_000
    labels = torch.randint(0, 10, (n,))
    batch = {"class_label": labels, "image": torch.zeros(n, 1)}
    out = drop_conditioning(batch, {"class_label": {"p": p, "val": 10}})
    dropped = (out["class_label"] == 10).float().mean().item()
    assert abs(dropped - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12
    kept = out["class_label"] != 10
    assert torch.equal(out["class_label"][kept], labels[kept])
    assert batch["class_label"] is labels and out["image"] is batch["image"]


def test_drop_conditioning_on_captions_defaults_to_the_empty_prompt():
    torch.manual_seed(1)
    captions = [f"caption {i}" for i in range(4000)]
    out = drop_conditioning({"txt": captions}, {"txt": {"p": 0.3, "val": None}})["txt"]
    dropped = sum(c == "" for c in out) / len(out)
    assert abs(dropped - 0.3) <= 5 * math.sqrt(0.3 * 0.7 / len(out))
    assert all(c in ("", captions[i]) for i, c in enumerate(out))


def test_drop_conditioning_names_a_missing_key():
    with pytest.raises(KeyError, match="'txt'"):
        drop_conditioning({"caption": ["a"]}, {"txt": {"p": 0.1}})


def test_rescale_bboxes_maps_boxes_into_crop_fractions_and_clips_them():
    # crop (0.2, 0.1, 0.5, 0.5): x0' = (x0 − 0.2)/0.5, y0' = (y0 − 0.1)/0.5, sizes / 0.5, kept inside [0, 1]
    boxes = rescale_bboxes([(0.3, 0.2, 0.1, 0.2), (0.1, 0.9, 0.6, 0.2)], (0.2, 0.1, 0.5, 0.5))
    assert [pytest.approx(box) for box in [(0.2, 0.2, 0.2, 0.4), (0.0, 1.0, 1.0, 0.0)]] == boxes
