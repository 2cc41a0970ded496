"""Convolution weights packed once for oneDNN, for CPU sampling (the modules live in
``ldm.modules.fast.packed_conv``; this module keeps their import path and ``prepack_convolutions``)."""

from __future__ import annotations

import logging

import torch.nn as nn

from ldm.modules.fast.packed_conv import PackedConv2d, PackedUpsampleConv, onednn_packing_available, pack_convolutions

__all__ = ["PackedConv2d", "PackedUpsampleConv", "prepack_convolutions"]

logger = logging.getLogger(__name__)


def prepack_convolutions(
    module: nn.Module, example_size: int | None = None, skip: tuple[type, ...] = ()
) -> nn.Module:
    """Replace, in place, every fp32 CPU ``Upsample`` with a 3×3 conv by a ``PackedUpsampleConv`` and every other
    fp32 CPU ``nn.Conv2d`` by a ``PackedConv2d``, except inside modules of the ``skip`` types (which read their
    conv weights directly); returns ``module``. Each conv is packed for ``(1, C, example_size, example_size)``
    inputs, or with ``None`` for the shape of its first input. Where this torch build cannot pack for oneDNN the
    same modules run plain channels-last convs (logged)."""
    if not onednn_packing_available():
        logger.info("prepack_convolutions: this torch build cannot pack conv weights for oneDNN; the swapped convs "
                    "run as plain channels-last convs")
    pack_convolutions(module, example_size, skip)
    return module
