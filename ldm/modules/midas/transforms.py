"""The MiDaS input transform of the SD 2.x depth model, on tensors (no OpenCV).

The original prepares ``midas_in`` with the MiDaS DPT transform: keep the aspect ratio, scale by whichever of
``384/H``, ``384/W`` is closer to 1 ("minimal"), round each side to the nearest multiple of 32 (halves to even),
resize bicubically; the [-1, 1] value range is kept (its [0, 1] → normalise(0.5, 0.5) round trip is the identity).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NET_SIZE = 384
MULTIPLE = 32


def midas_input_size(height: int, width: int, net_size: int = NET_SIZE, multiple: int = MULTIPLE) -> tuple[int, int]:
    """``(H, W)`` → the network's ``(h, w)``: ``s = argmin_{s ∈ {N/H, N/W}} |1 − s|``, ``h = m·round(s·H / m)``.

    Ties in ``|1 − s|`` fit the height; ``round`` sends halves to the even multiple, as NumPy does.
    """
    fit_height, fit_width = net_size / height, net_size / width
    scale = fit_width if abs(1 - fit_width) < abs(1 - fit_height) else fit_height
    return multiple * round(scale * height / multiple), multiple * round(scale * width / multiple)


def prepare_midas_input(image: torch.Tensor, net_size: int = NET_SIZE) -> torch.Tensor:
    """Image ``(B, 3, H, W)`` in [-1, 1] → ``(B, 3, h, w)`` for ``MiDaSInference`` (sizes: ``midas_input_size``).

    Bicubic (a = −0.75, half-pixel centres) like OpenCV's ``INTER_CUBIC``; at the border torch repeats the edge
    pixel where OpenCV reflects, so the outermost two rows/columns can differ slightly from the original.
    """
    size = midas_input_size(image.shape[-2], image.shape[-1], net_size)
    if size == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image, size=size, mode="bicubic", align_corners=False)
