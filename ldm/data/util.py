"""Dataset-side transforms of the SD 2.x training data (the original path ``ldm.data.util``).

``AddMiDaS(model_type)`` gives every sample the input of the depth model, as the depth-to-image model's
``concat_keys=("midas_in",)`` expect: ``sample["midas_in"]`` = the ``"jpg"`` image resized by the MiDaS rule
(:func:`ldm.modules.midas.transforms.midas_input_size`), channels first, values kept in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

from ldm.modules.midas.api import DPT_BACKBONE
from ldm.modules.midas.transforms import prepare_midas_input


class AddMiDaS:
    """``sample["jpg"]`` ``(H, W, 3)`` in [-1, 1] → ``sample["midas_in"]`` ``(3, h, w)`` float32, h and w multiples
    of 32 near 384 with the aspect ratio kept (both DPT models take 384-pixel inputs)."""

    def __init__(self, model_type: str) -> None:
        if model_type not in DPT_BACKBONE:
            raise ValueError(f"AddMiDaS model_type {model_type!r} is not supported; use one of {sorted(DPT_BACKBONE)}")
        self.model_type = model_type

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        image = torch.as_tensor(sample["jpg"], dtype=torch.float32)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"AddMiDaS needs sample['jpg'] as an (H, W, 3) image in [-1, 1], got {tuple(image.shape)}")
        sample["midas_in"] = prepare_midas_input(image.permute(2, 0, 1)[None])[0]
        return sample
