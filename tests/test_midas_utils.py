"""``ldm.modules.midas.utils``: PFM round trips, image reading, the network-side resizes, depth files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ldm.modules.midas.utils import read_image, read_pfm, resize_depth, resize_image, write_depth, write_pfm


@pytest.mark.parametrize("shape", [(5, 7, 3), (5, 7)])
def test_pfm_round_trip_and_header(tmp_path, shape):
    data = np.random.default_rng(0).random(shape, dtype=np.float32)
    write_pfm(tmp_path / "d.pfm", data, scale=2)
    header = (tmp_path / "d.pfm").read_bytes().split(b"\n")[:3]
    assert header[0] == (b"PF" if len(shape) == 3 else b"Pf") and header[1] == b"7 5" and float(header[2]) == -2.0
    back, scale = read_pfm(tmp_path / "d.pfm")
    assert scale == 2.0 and np.array_equal(back, data)


def test_read_image_is_rgb_in_unit_range(tmp_path):
    Image.fromarray(np.full((4, 6), 51, dtype=np.uint8)).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.shape == (4, 6, 3)
    np.testing.assert_allclose(image, 0.2)


def test_resizes():
    """320x200 → longer side 384, both sides rounded up to multiples of 32: 384x256 (240 → 256)."""
    resized = resize_image(np.full((200, 320, 3), 0.5))
    assert resized.shape == (1, 3, 256, 384)
    torch.testing.assert_close(resized, torch.full_like(resized, 0.5))
    depth = resize_depth(torch.arange(16.0).reshape(1, 1, 4, 4), width=8, height=6)
    assert depth.shape == (6, 8) and depth[0, 0] < depth[-1, -1]


def test_write_depth_writes_pfm_and_a_full_range_png(tmp_path):
    depth = np.linspace(0, 3, 12, dtype=np.float32).reshape(3, 4)
    write_depth(tmp_path / "out", depth, bits=2)
    png = np.asarray(Image.open(tmp_path / "out.png"))
    assert png.min() == 0 and png.max() == 65535
    assert np.array_equal(read_pfm(tmp_path / "out.pfm")[0], depth)
