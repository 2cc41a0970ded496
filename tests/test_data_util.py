"""``ldm.data.util.AddMiDaS``: the depth model's input added to each training sample (the SD 2.x data path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldm.data.util import AddMiDaS


def test_midas_input_is_the_resized_image_channels_first():
    """A 256x320 image goes to 320x384 (the scale nearer 1, 384/320, fits the width; 256·1.2 = 307 rounds to 320);
    a horizontal ramp stays a ramp within the same range."""
    ramp = np.linspace(-1, 1, 320, dtype=np.float32)
    image = np.broadcast_to(ramp[None, :, None], (256, 320, 3)).copy()
    sample = AddMiDaS("dpt_hybrid")({"jpg": image, "txt": "x"})
    midas_in = sample["midas_in"]
    assert midas_in.shape == (3, 320, 384) and midas_in.dtype == torch.float32
    assert sample["txt"] == "x" and sample["jpg"] is image
    assert torch.all(midas_in[0] == midas_in[1])
    torch.testing.assert_close(midas_in[:, 0], midas_in[:, -1])
    interior = midas_in[0, 0, 4:-4]
    assert torch.all(interior[1:] > interior[:-1])
    assert midas_in.min() >= -1.01 and midas_in.max() <= 1.01


def test_constant_images_stay_constant_and_sizes_already_fitting_are_kept():
    sample = AddMiDaS("dpt_large")({"jpg": torch.full((384, 384, 3), 0.25)})
    torch.testing.assert_close(sample["midas_in"], torch.full((3, 384, 384), 0.25))


def test_bad_model_type_and_layout_are_named():
    with pytest.raises(ValueError, match="dpt_hybrid"):
        AddMiDaS("midas_v21")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        AddMiDaS("dpt_hybrid")({"jpg": torch.zeros(3, 64, 64)})
