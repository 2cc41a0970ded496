"""Image files of the sampling scripts (ldm/image_io.py)."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.image_io import (
    image_to_tensor,
    make_grid,
    make_watermarker,
    next_index,
    read_rgb_image,
    save_grid,
    save_samples,
)


@pytest.mark.parametrize(("count", "channels", "nrow"), [(1, 3, 8), (5, 3, 4), (9, 3, 8), (7, 1, 3), (4, 3, 15)])
def test_make_grid_equals_torchvision(count, channels, nrow):
    torchvision_utils = pytest.importorskip("torchvision.utils")
    images = torch.rand(count, channels, 5, 7, generator=torch.Generator().manual_seed(count))
    assert torch.equal(make_grid(images, nrow=nrow), torchvision_utils.make_grid(images, nrow=nrow))


def test_image_to_tensor_rounds_down_and_maps_to_minus_one_one():
    pixels = np.zeros((21, 18, 3), dtype=np.uint8)
    pixels[..., 0] = 255
    tensor = image_to_tensor(Image.fromarray(pixels), 8)
    assert tensor.shape == (1, 3, 16, 16)
    torch.testing.assert_close(tensor[0, 0], torch.ones(16, 16))
    torch.testing.assert_close(tensor[0, 1:], -torch.ones(2, 16, 16))
    with pytest.raises(ValueError, match="at least 32 pixels"):
        image_to_tensor(Image.fromarray(pixels), 32)


def test_read_rgb_image_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        read_rgb_image(tmp_path / "missing.png")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((8, 8), 7, dtype=np.uint8)).save(good)
    assert read_rgb_image(good).mode == "RGB"
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"truncated\.png"):
        read_rgb_image(truncated)


def test_samples_are_numbered_after_existing_files(tmp_path):
    (tmp_path / "00007.png").write_bytes(b"")
    (tmp_path / "notes.txt").write_bytes(b"")
    images = torch.stack([torch.full((3, 4, 4), 0.5), torch.ones(3, 4, 4)])
    paths = save_samples(images, tmp_path)
    assert [p.name for p in paths] == ["00008.png", "00009.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[0])), np.full((4, 4, 3), 127, dtype=np.uint8))
    assert next_index(tmp_path, r"(\d+)\.png") == 10


def test_grid_layout_matches_torchvision(tmp_path):
    batches = [torch.rand(2, 3, 4, 6), torch.rand(1, 3, 4, 6)]
    path = save_grid(batches, tmp_path, n_rows=2)
    grid = np.asarray(Image.open(path))
    assert path.name == "grid-0000.png" and grid.shape == (2 + 2 * 6, 2 + 2 * 8, 3)
    expected = (255.0 * batches[1][0].permute(1, 2, 0).numpy()).astype(np.uint8)
    np.testing.assert_array_equal(grid[8:12, 2:8], expected)  # third image: second row, first column
    assert save_grid(batches, tmp_path, n_rows=2).name == "grid-0001.png"


def test_watermark_only_with_the_package(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "imwatermark", None)
    assert make_watermarker() is None

    class FakeEncoder:
        """Records the watermark and marks the blue channel (index 0 in the BGR arrays it receives)."""

        def set_watermark(self, kind, payload):
            self.payload = (kind, payload)

        def encode(self, bgr, method):
            assert method == "dwtDct" and self.payload == ("bytes", b"StableDiffusionV1")
            marked = bgr.copy()
            marked[..., 0] = 200
            return marked

    monkeypatch.setitem(sys.modules, "imwatermark", types.SimpleNamespace(WatermarkEncoder=FakeEncoder))
    watermark = make_watermarker()
    (path,) = save_samples(torch.zeros(1, 3, 4, 4), tmp_path, watermark)
    pixels = np.asarray(Image.open(path))
    assert (pixels[..., 2] == 200).all() and (pixels[..., :2] == 0).all()


def test_make_grid_takes_one_image_without_a_batch_dimension():
    """Diffusion rows are logged as one ready grid ``(3, H, W)``, as in the original; it passes through unchanged."""
    row = torch.rand(3, 10, 26)
    assert torch.equal(make_grid(row), row)
    assert make_grid(torch.rand(1, 1, 4, 5)).shape == (3, 4, 5)
