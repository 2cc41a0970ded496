"""The MiDaS sample transforms: dicts with ``"image"`` ``(H, W, C)`` and optionally ``"disparity"``, ``"depth"``
``(H, W)`` and ``"mask"`` ``(H, W)`` numpy arrays, resized on torch (OpenCV is not needed).

Interpolation methods carry OpenCV's codes (:data:`INTER_NEAREST` 0, :data:`INTER_LINEAR` 1, :data:`INTER_CUBIC`
2, :data:`INTER_AREA` 3), so ``cv2.INTER_*`` values can be passed as they are. Measured against ``cv2.resize``
(opencv-python-headless 5.1) on random float32 images in [0, 1] of 900 random size pairs (1-600 px per side,
shrinking, enlarging and mixed), borders included:

- area: OpenCV's two cases (``area_weights``): the exact pixel-overlap average when no side grows, else a
  two-tap interpolation whose weights are the overlaps for a growing side: max difference 4e-7.
- linear: ``F.interpolate(mode="bilinear")``, half-pixel centres: max difference 7e-5 (float32 weights).
- cubic: ``F.interpolate(mode="bicubic")`` (a = -0.75, half-pixel centres, edge pixels repeated): max
  difference 8e-5.
- nearest: source index ``floor(i · (1 / (out / in)))`` in double precision, clamped, as OpenCV computes it
  (``nearest_indices``): the same pixels. (torch's own "nearest" rounds the scale to float32 and can pick the
  neighbouring pixel where ``i·in/out`` is an integer.)

Integer images are resized in float32 and rounded back to their type; OpenCV rounds in fixed point, so 8-bit
results can differ by one (seen for linear).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

INTER_NEAREST = 0
INTER_LINEAR = 1
INTER_CUBIC = 2
INTER_AREA = 3
_TORCH_MODES = {INTER_LINEAR: "bilinear", INTER_CUBIC: "bicubic"}
RESIZE_METHODS = ("lower_bound", "upper_bound", "minimal")


def area_weights(size_in: int, size_out: int, average: bool = True, dtype: torch.dtype = torch.float64
                 ) -> torch.Tensor:
    """``(size_out, size_in)`` weights of area resampling along one axis; every row sums to 1.

    With ``s = size_in / size_out`` (an output cell in input pixel units):
    ``average``: ``A[o, i] = |[o·s, (o+1)·s) ∩ [i, i+1)| / s``, the overlap average (OpenCV when no side of the
    image grows). Otherwise (OpenCV when some side grows) two taps: ``j = floor(o·s)`` gets ``1 − f`` and ``j + 1``
    gets ``f = frac(o + 1 − (j + 1)/s)`` if that is positive, else 0; on a growing axis these are the overlaps
    (up to OpenCV's rounding, reproduced: where ``o·s`` is an integer ``j`` can be one less).
    """
    step = size_in / size_out
    outputs = torch.arange(size_out, dtype=torch.float64)
    if average:
        cell_start = outputs[:, None] * step
        pixel_start = torch.arange(size_in, dtype=torch.float64)[None, :]
        overlap = torch.minimum(cell_start + step, pixel_start + 1) - torch.maximum(cell_start, pixel_start)
        return (overlap.clamp(min=0) / step).to(dtype)
    # OpenCV's rounding: the step as 1 / (out / in), the share rounded to float32 (decides ties such as o·s = 24).
    first = (outputs * (1.0 / (size_out / size_in))).floor()
    reach = (outputs + 1 - (first + 1) * (size_out / size_in)).float().double()
    share = torch.where(reach > 0, reach - reach.floor(), torch.zeros_like(reach))
    share = torch.where(first >= size_in - 1, torch.zeros_like(share), share)
    first = first.clamp(max=size_in - 1).long()
    weights = torch.zeros(size_out, size_in, dtype=torch.float64)
    weights[torch.arange(size_out), first] = 1 - share
    weights[torch.arange(size_out), (first + 1).clamp(max=size_in - 1)] += share
    return weights.to(dtype)


def nearest_indices(size_in: int, size_out: int) -> torch.Tensor:
    """Source index of each output pixel for nearest resampling along one axis: ``min(floor(o · r), size_in − 1)``
    with ``r = 1 / (size_out / size_in)`` in double precision (OpenCV's arithmetic, ties included)."""
    ratio = 1.0 / (size_out / size_in)
    return (torch.arange(size_out, dtype=torch.float64) * ratio).floor().long().clamp(max=size_in - 1)


def resize_array(array: np.ndarray, size: tuple[int, int], interpolation: int = INTER_AREA) -> np.ndarray:
    """``(H, W)`` or ``(H, W, C)`` → ``(h, w)`` / ``(h, w, C)`` for ``size = (w, h)`` (OpenCV's order), same dtype.

    ``interpolation``: an ``INTER_*`` code (see the module docstring for how each compares with OpenCV).
    """
    if interpolation not in (*_TORCH_MODES, INTER_AREA, INTER_NEAREST):
        raise ValueError(f"unsupported interpolation {interpolation!r}; use INTER_NEAREST (0), INTER_LINEAR (1), "
                         "INTER_CUBIC (2) or INTER_AREA (3)")
    width, height = size
    source = np.asarray(array)
    work_dtype = torch.float64 if source.dtype == np.float64 else torch.float32
    planes = torch.from_numpy(np.ascontiguousarray(source)).to(work_dtype)
    planes = planes.reshape(*source.shape[:2], -1).permute(2, 0, 1)  # (C, H, W)
    if interpolation == INTER_AREA:
        average = height <= source.shape[0] and width <= source.shape[1]
        rows = area_weights(source.shape[0], height, average, work_dtype)
        cols = area_weights(source.shape[1], width, average, work_dtype)
        resized = torch.einsum("hy,cyx,wx->chw", rows, planes, cols)
    elif interpolation == INTER_NEAREST:
        rows, cols = nearest_indices(source.shape[0], height), nearest_indices(source.shape[1], width)
        resized = planes[:, rows][:, :, cols]
    else:
        resized = F.interpolate(planes[None], size=(height, width), mode=_TORCH_MODES[interpolation],
                                align_corners=False)[0]
    result = resized.permute(1, 2, 0).reshape(height, width, *source.shape[2:]).numpy()
    if np.issubdtype(source.dtype, np.integer):
        limits = np.iinfo(source.dtype)
        return np.clip(np.rint(result), limits.min, limits.max).astype(source.dtype)
    return result.astype(source.dtype, copy=False)


def _resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    return resize_array(np.asarray(mask, dtype=np.float32), size, INTER_NEAREST).astype(bool)


def apply_min_size(sample: dict[str, Any], size: tuple[int, int], image_interpolation_method: int = INTER_AREA
                   ) -> dict[str, Any] | tuple[int, int]:
    """Enlarge a sample, keeping its aspect ratio, until its ``"disparity"`` is at least ``size = (h, w)``.

    Scale ``s = max(h / H, w / W)``, new size ``(ceil(s·H), ceil(s·W))``: the image with
    ``image_interpolation_method``, disparity and mask nearest (the mask stays boolean), in place. Returns the new
    ``(h', w')``; a sample already large enough is returned unchanged (the original's two return types).
    """
    height, width = sample["disparity"].shape[:2]
    if height >= size[0] and width >= size[1]:
        return sample
    scale = max(size[0] / height, size[1] / width)
    new_height, new_width = math.ceil(scale * height), math.ceil(scale * width)
    target = (new_width, new_height)
    sample["image"] = resize_array(sample["image"], target, image_interpolation_method)
    sample["disparity"] = resize_array(sample["disparity"], target, INTER_NEAREST)
    sample["mask"] = _resize_mask(sample["mask"], target)
    return new_height, new_width


class Resize:
    """Resize a sample to about ``(width, height)``.

    :param resize_target: also resize ``"disparity"``, ``"depth"`` (nearest) and ``"mask"`` (nearest, boolean).
    :param keep_aspect_ratio: scale both sides by one factor, chosen by ``resize_method`` from
        ``s_w = width / W`` and ``s_h = height / H``: "lower_bound" ``max`` (output covers the size),
        "upper_bound" ``min`` (output fits in it), "minimal" the one closer to 1 (``s_h`` on a tie).
    :param ensure_multiple_of: ``m``: each side becomes ``m·round(x / m)`` (halves to even), or the multiple below
        / above when that breaks the bound ("upper_bound" / "lower_bound").
    :param image_interpolation_method: an ``INTER_*`` code for the image.
    """

    def __init__(self, width: int, height: int, resize_target: bool = True, keep_aspect_ratio: bool = False,
                 ensure_multiple_of: int = 1, resize_method: str = "lower_bound",
                 image_interpolation_method: int = INTER_AREA) -> None:
        if resize_method not in RESIZE_METHODS:
            raise ValueError(f"resize_method {resize_method!r} not implemented; use one of {RESIZE_METHODS}")
        self._width, self._height = width, height
        self._resize_target = resize_target
        self._keep_aspect_ratio = keep_aspect_ratio
        self._multiple_of = ensure_multiple_of
        self._resize_method = resize_method
        self._interpolation = image_interpolation_method

    def constrain_to_multiple_of(self, x: float, min_val: int = 0, max_val: int | None = None) -> int:
        """The multiple of ``ensure_multiple_of`` nearest ``x`` (halves to even); the one below if that exceeds
        ``max_val``, the one above if it falls under ``min_val``."""
        units = x / self._multiple_of
        nearest = round(units) * self._multiple_of
        if max_val is not None and nearest > max_val:
            nearest = math.floor(units) * self._multiple_of
        if nearest < min_val:
            nearest = math.ceil(units) * self._multiple_of
        return int(nearest)

    def get_size(self, width: int, height: int) -> tuple[int, int]:
        """The output ``(width, height)`` for an input of ``width x height`` (rules in the class docstring)."""
        scale_w, scale_h = self._width / width, self._height / height
        if self._keep_aspect_ratio:
            if self._resize_method == "lower_bound":
                scale_w = scale_h = max(scale_w, scale_h)
            elif self._resize_method == "upper_bound":
                scale_w = scale_h = min(scale_w, scale_h)
            else:
                scale_w = scale_h = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        bounds: dict[str, tuple[dict[str, int], dict[str, int]]] = {
            "lower_bound": ({"min_val": self._width}, {"min_val": self._height}),
            "upper_bound": ({"max_val": self._width}, {"max_val": self._height}),
            "minimal": ({}, {}),
        }
        bound_w, bound_h = bounds[self._resize_method]
        return (self.constrain_to_multiple_of(scale_w * width, **bound_w),
                self.constrain_to_multiple_of(scale_h * height, **bound_h))

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        """Resize ``sample`` in place and return it (the image with the chosen interpolation)."""
        size = self.get_size(sample["image"].shape[1], sample["image"].shape[0])
        sample["image"] = resize_array(sample["image"], size, self._interpolation)
        if self._resize_target:
            for key in ("disparity", "depth"):
                if key in sample:
                    sample[key] = resize_array(sample[key], size, INTER_NEAREST)
            if "mask" in sample:
                sample["mask"] = _resize_mask(sample["mask"], size)
        return sample


class NormalizeImage:
    """``image ← (image − mean) / std`` per channel (``mean``, ``std``: one value or one per channel)."""

    def __init__(self, mean: Any, std: Any) -> None:
        self._mean = mean
        self._std = std

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample["image"] = (sample["image"] - np.asarray(self._mean)) / np.asarray(self._std)
        return sample


class PrepareForNet:
    """The network's layout: image ``(H, W, C)`` → ``(C, H, W)`` float32; mask, disparity and depth float32;
    all C-contiguous."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        sample["image"] = np.ascontiguousarray(np.transpose(sample["image"], (2, 0, 1)), dtype=np.float32)
        for key in ("mask", "disparity", "depth"):
            if key in sample:
                sample[key] = np.ascontiguousarray(sample[key], dtype=np.float32)
        return sample
