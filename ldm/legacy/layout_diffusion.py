"""``Layout2ImgDiffusion``: a ``LatentDiffusion`` conditioned on tokenized bounding boxes (``coordinates_bbox``).

Kept for the original config path ``ldm.models.diffusion.ddpm.Layout2ImgDiffusion`` (re-exported there). The
layout datasets and their conditional builders (taming-transformers' COCO / Open Images layouts) are not part of
this package: the data module must provide them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.util import SettingError

LAYOUT_KEY = "coordinates_bbox"
#: Size ``(W, H)`` of the rendered layout images in ``log_images``' ``bbox_image``.
BBOX_IMAGE_SIZE = (256, 256)


class Layout2ImgDiffusion(LatentDiffusion):
    """LatentDiffusion with ``cond_stage_key="coordinates_bbox"``; its image logs add the layouts as drawings."""

    def __init__(self, cond_stage_key: str, *args, **kwargs):
        if cond_stage_key != LAYOUT_KEY:
            raise SettingError(
                f"Layout2ImgDiffusion only works with cond_stage_key={LAYOUT_KEY!r}, got {cond_stage_key!r}; "
                "use LatentDiffusion for other conditionings."
            )
        super().__init__(*args, cond_stage_key=cond_stage_key, **kwargs)

    @torch.no_grad()
    def log_images(self, batch: Mapping[str, Any], N: int = 8, *args, **kwargs) -> dict[str, torch.Tensor]:
        """LatentDiffusion's logs plus ``bbox_image`` ``(N, 3, 256, 256)``: each sample's boxes, drawn and labelled.

        Drawn by ``trainer.datamodule.datasets["train" | "validation"].conditional_builders[cond_stage_key]``
        (``plot(tokens, label_fn, size)``), labels from the dataset's ``get_textual_label(get_category_id(n))``.
        """
        logs = super().log_images(batch, N, *args, **kwargs)
        dataset = self.trainer.datamodule.datasets["train" if self.training else "validation"]
        builder = dataset.conditional_builders[self.cond_stage_key]

        def label(category_number: int) -> str:
            return dataset.get_textual_label(dataset.get_category_id(category_number))

        drawings = [
            builder.plot(tokens.detach().cpu(), label, BBOX_IMAGE_SIZE) for tokens in batch[self.cond_stage_key][:N]
        ]
        logs["bbox_image"] = torch.stack(drawings, dim=0)
        return logs
