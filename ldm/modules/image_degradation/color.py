"""Colour conversions: MATLAB's BT.601 ``rgb2ycbcr`` / ``ycbcr2rgb`` and OpenCV's BGR ↔ gray.

For uint8 input, values are in ``[0, 255]`` and results are rounded (and clipped); for float input, values are in
``[0, 1]`` and results keep the input's float dtype. Inputs are never modified.
"""

from __future__ import annotations

import numpy as np

#: ``[Y, Cb, Cr] = [R, G, B] @ RGB_TO_YCBCR / 255 + [16, 128, 128]`` for RGB in ``[0, 255]`` (BT.601, MATLAB).
RGB_TO_YCBCR = np.array([[65.481, -37.797, 112.0], [128.553, -74.203, -93.786], [24.966, 112.0, -18.214]])
#: ``[R, G, B] = [Y, Cb, Cr] @ YCBCR_TO_RGB · 255 + YCBCR_TO_RGB_OFFSET`` for YCbCr in ``[0, 255]`` (MATLAB).
YCBCR_TO_RGB = np.array([[0.00456621, 0.00456621, 0.00456621], [0, -0.00153632, 0.00791071],
                         [0.00625893, -0.00318811, 0]])
YCBCR_TO_RGB_OFFSET = np.array([-222.921, 135.576, -276.836])


def _to_255(img: np.ndarray) -> np.ndarray:
    return img if img.dtype == np.uint8 else img * 255.0


def _from_255(result: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(result.round(), 0, 255).astype(np.uint8)
    return (result / 255.0).astype(dtype)


def _to_ycbcr(img: np.ndarray, only_y: bool, matrix: np.ndarray) -> np.ndarray:
    scaled = _to_255(img)
    if only_y:
        result = np.dot(scaled, matrix[:, 0]) / 255.0 + 16.0
    else:
        result = np.matmul(scaled, matrix) / 255.0 + [16, 128, 128]
    return _from_255(result, img.dtype)


def rgb2ycbcr(img: np.ndarray, only_y: bool = True) -> np.ndarray:
    """MATLAB ``rgb2ycbcr`` of ``(…, 3)`` RGB: ``Y = (65.481 R + 128.553 G + 24.966 B) / 255 + 16`` (RGB in
    [0, 255]); with ``only_y=False`` all of ``[Y, Cb, Cr]`` (:data:`RGB_TO_YCBCR`) as ``(…, 3)``, else ``(…)``."""
    return _to_ycbcr(img, only_y, RGB_TO_YCBCR)


def bgr2ycbcr(img: np.ndarray, only_y: bool = True) -> np.ndarray:
    """:func:`rgb2ycbcr` for BGR channel order."""
    return _to_ycbcr(img, only_y, RGB_TO_YCBCR[::-1])


def ycbcr2rgb(img: np.ndarray) -> np.ndarray:
    """MATLAB ``ycbcr2rgb`` of ``(…, 3)`` YCbCr: ``RGB = YCbCr @ YCBCR_TO_RGB · 255 + YCBCR_TO_RGB_OFFSET``."""
    result = np.matmul(_to_255(img), YCBCR_TO_RGB) * 255.0 + YCBCR_TO_RGB_OFFSET
    return _from_255(result, img.dtype)


def bgr_to_gray(img: np.ndarray) -> np.ndarray:
    """``cv2.cvtColor(img, COLOR_BGR2GRAY)``: ``Y = 0.299 R + 0.587 G + 0.114 B`` of ``(H, W, 3)`` BGR → ``(H, W)``.

    uint8 uses OpenCV's 15-bit fixed point, ``(3735 B + 19235 G + 9798 R + 2¹⁴) >> 15`` (exact); floats are summed
    B, G, R in their own precision.
    """
    if img.dtype == np.uint8:
        b, g, r = (img[..., i].astype(np.int64) for i in range(3))
        return ((3735 * b + 19235 * g + 9798 * r + (1 << 14)) >> 15).astype(np.uint8)
    b, g, r = (img[..., i] for i in range(3))
    return b * img.dtype.type(0.114) + g * img.dtype.type(0.587) + r * img.dtype.type(0.299)


def channel_convert(in_c: int, tar_type: str, img_list: list[np.ndarray]) -> list[np.ndarray]:
    """Convert a list of images between BGR, gray and Y: ``(3, 'gray')`` → ``(H, W, 1)`` gray (OpenCV's weights),
    ``(3, 'y')`` → ``(H, W, 1)`` BT.601 luma (:func:`bgr2ycbcr`), ``(1, 'RGB')`` → ``(H, W, 3)`` replicated gray;
    any other combination returns the list unchanged."""
    if in_c == 3 and tar_type == "gray":
        return [bgr_to_gray(img)[:, :, None] for img in img_list]
    if in_c == 3 and tar_type == "y":
        return [bgr2ycbcr(img, only_y=True)[:, :, None] for img in img_list]
    if in_c == 1 and tar_type == "RGB":
        return [np.repeat(img.reshape(*img.shape[:2], 1), 3, axis=2) for img in img_list]
    return img_list
