"""Helpers the sampling scripts share (ldm/inference.py)."""

from __future__ import annotations

import pytest
import torch

from ldm.inference import check_image_size, choose_device, precision_scope, prompt_batches, seed_everything


def test_check_image_size_names_the_nearest_valid_sizes():
    check_image_size(512, 768, 8)
    with pytest.raises(ValueError, match=r"--W 500 is not a multiple of 8 \(--f\); use --W 496 or --W 504"):
        check_image_size(512, 500, 8)
    with pytest.raises(ValueError, match=r"--H 0 .* use --H 64 or --H 64"):
        check_image_size(0, 64, 64, why="--f times the UNet's downsampling")


def test_prompt_batches(tmp_path):
    assert prompt_batches("a cat", None, 3) == [["a cat"] * 3]
    path = tmp_path / "prompts.txt"
    path.write_text("one\n\ntwo\nthree\n")
    assert prompt_batches("ignored", str(path), 2) == [["one", "two"], ["three"]]
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*--from-file"):
        prompt_batches("x", str(tmp_path / "nope.txt"), 2)
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="no prompts"):
        prompt_batches("x", str(tmp_path / "empty.txt"), 2)


def test_seed_everything_repeats_torch_draws():
    seed_everything(123)
    first = torch.randn(3)
    seed_everything(123)
    torch.testing.assert_close(torch.randn(3), first, rtol=0, atol=0)
    assert 0 <= seed_everything(None) < 2**32


def test_device_and_precision_on_cpu():
    assert choose_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert choose_device().type == expected
    with precision_scope("autocast", torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_make_sampler_builds_named_samplers():
    from ldm.inference import SAMPLERS, make_sampler
    from ldm.models.diffusion.ddim import DDIMSampler
    from tests.sampler_fakes import GaussianModel

    model = GaussianModel()
    assert {"DDIM", "PLMS", "DPM-Solver++", "Euler a", "DPM++ 2M"} <= set(SAMPLERS)
    sampler = make_sampler("ddim", model)
    assert sampler.entry.name == "DDIM" and isinstance(sampler.legacy, DDIMSampler)
    karras = make_sampler("DPM++ 2M Karras", model)
    assert (karras.entry.name, karras.schedule) == ("DPM++ 2M", "karras")
    assert make_sampler("dpmpp_2m", model, schedule="exponential").schedule == "exponential"
    with pytest.raises(ValueError, match=r"unknown sampler 'plm'; did you mean 'PLMS'"):
        make_sampler("plm", model)
