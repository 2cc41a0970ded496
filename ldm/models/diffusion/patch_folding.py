"""Patch-wise first stage and denoiser for images larger than the models were trained on (``split_input_params``).

Set ``model.split_input_params`` to a dict with ``ks`` and ``stride`` (patch size and step,
in the input's pixels), ``vqf`` (the first stage's down-sampling factor), ``patch_distributed_vq`` (also encode and
decode patch-wise), ``clip_min_weight`` / ``clip_max_weight`` and ``tie_braker`` with ``clip_min_tie_weight`` /
``clip_max_tie_weight``. Overlapping patches are blended with weights that grow with the distance to the patch
border: out = fold(Σ w · f(patch)) / fold(w), so f = identity gives back the input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from einops import rearrange

from ldm.models.autoencoder import VQModelInterface

logger = logging.getLogger(__name__)

#: ``cond_stage_key`` values whose conditioning is an image of the latent's size, cut into the same patches.
SPATIAL_COND_KEYS = ("image", "LR_image", "segmentation", "bbox_img")


def _fit(size: Sequence[int], h: int, w: int, what: str) -> tuple[int, int]:
    """``size`` limited to the input's ``(h, w)``."""
    if size[0] > h or size[1] > w:
        logger.info("split_input_params: reducing %s %s to the input size (%d, %d)", what, tuple(size), h, w)
        return min(size[0], h), min(size[1], w)
    return size[0], size[1]


def meshgrid(h: int, w: int) -> torch.Tensor:
    """``(h, w, 2)`` integer coordinates ``[y, x]`` of every pixel."""
    y = torch.arange(0, h).view(h, 1, 1).repeat(1, w, 1)
    x = torch.arange(0, w).view(1, w, 1).repeat(h, 1, 1)
    return torch.cat([y, x], dim=-1)


def delta_border(h: int, w: int) -> torch.Tensor:
    """``(h, w)`` distance to the nearest border in units of the side: 0 on the border, 0.5 at the centre."""
    arr = meshgrid(h, w) / torch.tensor([h - 1, w - 1]).view(1, 1, 2)
    dist_left_up = torch.min(arr, dim=-1, keepdim=True)[0]
    dist_right_down = torch.min(1 - arr, dim=-1, keepdim=True)[0]
    return torch.min(torch.cat([dist_left_up, dist_right_down], dim=-1), dim=-1)[0]


def clipped_border_distance(h: int, w: int, low: float, high: float) -> torch.Tensor:
    """:func:`delta_border` of an ``h × w`` grid clipped to [low, high], flattened to ``(h·w,)``."""
    return torch.clip(delta_border(h, w), low, high).reshape(h * w)


def get_weighting(params: dict[str, Any], h: int, w: int, Ly: int, Lx: int, device: torch.device | str) -> torch.Tensor:
    """Blend weights ``(1, h·w, Ly·Lx)``: w[p, l] = clipped border distance of pixel p in its patch, times (with
    ``tie_braker``) the clipped border distance of patch l in the ``Ly × Lx`` grid of patches."""
    within = clipped_border_distance(h, w, params["clip_min_weight"], params["clip_max_weight"])
    if params["tie_braker"]:
        across = clipped_border_distance(Ly, Lx, params["clip_min_tie_weight"], params["clip_max_tie_weight"])
    else:
        across = torch.ones(Ly * Lx, dtype=within.dtype)
    return (within[:, None] * across[None, :]).unsqueeze(0).to(device)


def get_fold_unfold(
    params: dict[str, Any], x: torch.Tensor, kernel_size: Sequence[int], stride: Sequence[int], uf: int = 1, df: int = 1
) -> tuple[nn.Fold, nn.Unfold, torch.Tensor, torch.Tensor]:
    """``unfold`` cuts ``x`` ``(B, C, H, W)`` into patches; ``fold`` puts patches back at ``uf``× (or ``1/df``×)
    the resolution; ``normalization`` ``(1, 1, H', W')`` is the folded weight sum; ``weighting`` is
    ``(1, 1, k0', k1', L)``."""
    h, w = x.shape[2:]
    Ly = (h - kernel_size[0]) // stride[0] + 1
    Lx = (w - kernel_size[1]) // stride[1] + 1
    if uf > 1 and df > 1:
        raise NotImplementedError(f"get_fold_unfold: up-sampling uf={uf} and down-sampling df={df} together")
    scale = lambda n: n * uf // df
    unfold = nn.Unfold(kernel_size=kernel_size, dilation=1, padding=0, stride=stride)
    out_kernel = (scale(kernel_size[0]), scale(kernel_size[1]))
    out_size = (scale(h), scale(w))
    fold = nn.Fold(
        output_size=out_size,
        kernel_size=out_kernel,
        dilation=1,
        padding=0,
        stride=(scale(stride[0]), scale(stride[1])),
    )
    weighting = get_weighting(params, *out_kernel, Ly, Lx, x.device).to(x.dtype)
    normalization = fold(weighting).view(1, 1, *out_size)
    return fold, unfold, normalization, weighting.view(1, 1, *out_kernel, Ly * Lx)

# ---- the patch-wise paths ------------------------------------------------------------------------------


def patch_distributed(model: Any) -> bool:
    """Whether ``model`` encodes and decodes patch-wise (``split_input_params.patch_distributed_vq``)."""
    params = getattr(model, "split_input_params", None)
    return params is not None and bool(params["patch_distributed_vq"])


def _blend(outputs: list[torch.Tensor], fold: nn.Fold, norm: torch.Tensor, weighting: torch.Tensor):
    """Patch outputs ``L × (B, C, k0', k1')`` → the weighted, folded, normalised image ``(B, C, H', W')``."""
    o = torch.stack(outputs, dim=-1) * weighting
    return fold(rearrange(o, "b c k0 k1 l -> b (c k0 k1) l")) / norm


def encode_patchwise(model: Any, x: torch.Tensor) -> torch.Tensor:
    """First-stage encoding of overlapping ``ks`` patches (tensor encoders: VQ, identity)."""
    params = model.split_input_params
    params["original_image_size"] = x.shape[-2:]
    h, w = x.shape[2:]
    ks, stride = _fit(params["ks"], h, w, "kernel"), _fit(params["stride"], h, w, "stride")
    fold, unfold, norm, weighting = get_fold_unfold(params, x, ks, stride, df=params["vqf"])
    cols = unfold(x)
    patches = cols.view(x.shape[0], -1, ks[0], ks[1], cols.shape[-1])
    outputs = [model.first_stage_model.encode(patches[..., i]) for i in range(patches.shape[-1])]
    if not isinstance(outputs[0], torch.Tensor):
        raise NotImplementedError(
            "patch_distributed_vq encoding blends tensors; this first stage returns "
            f"{type(outputs[0]).__name__}. Use a VQ first stage or set patch_distributed_vq: false."
        )
    return _blend(outputs, fold, norm, weighting)


def decode_patchwise(model: Any, z: torch.Tensor, force_not_quantize: bool) -> torch.Tensor:
    """Decoding of overlapping ``ks`` latent patches (``z`` already divided by ``scale_factor``)."""
    params = model.split_input_params
    h, w = z.shape[2:]
    ks, stride = _fit(params["ks"], h, w, "kernel"), _fit(params["stride"], h, w, "stride")
    fold, unfold, norm, weighting = get_fold_unfold(params, z, ks, stride, uf=params["vqf"])
    cols = unfold(z)
    patches = cols.view(z.shape[0], -1, ks[0], ks[1], cols.shape[-1])
    is_vq = isinstance(model.first_stage_model, VQModelInterface)
    kwargs = {"force_not_quantize": force_not_quantize} if is_vq else {}
    outputs = [model.first_stage_model.decode(patches[..., i], **kwargs) for i in range(patches.shape[-1])]
    return _blend(outputs, fold, norm, weighting)


def apply_model_patchwise(model: Any, x_noisy: torch.Tensor, t: torch.Tensor, cond: dict[str, Any]) -> torch.Tensor:
    """The denoiser on overlapping ``ks`` patches of ``x_noisy``; an image conditioning is cut the same way."""
    if len(cond) != 1:
        raise NotImplementedError("split_input_params handles one conditioning kind, not a hybrid dict.")
    params = model.split_input_params
    ks, stride = params["ks"], params["stride"]
    fold, unfold, norm, weighting = get_fold_unfold(params, x_noisy, ks, stride)
    cols = unfold(x_noisy)
    patches = cols.view(x_noisy.shape[0], -1, ks[0], ks[1], cols.shape[-1])
    n_patches = patches.shape[-1]
    if model.cond_stage_key in SPATIAL_COND_KEYS and model.model.conditioning_key:
        (c_key, c_list), = cond.items()
        if len(c_list) != 1:
            raise NotImplementedError("split_input_params cuts a single spatial conditioning tensor.")
        c_cols = unfold(c_list[0])
        c_patches = c_cols.view(c_cols.shape[0], -1, ks[0], ks[1], n_patches)
        cond_list = [{c_key: [c_patches[..., i]]} for i in range(n_patches)]
    elif model.cond_stage_key == "coordinates_bbox":
        raise NotImplementedError("split_input_params with bounding-box conditioning needs the bbox tokenizer.")
    else:
        cond_list = [cond] * n_patches
    outputs = [model.model(patches[..., i], t, **cond_list[i]) for i in range(n_patches)]
    if isinstance(outputs[0], tuple):
        raise NotImplementedError("split_input_params cannot blend denoisers that return tuples.")
    return _blend(outputs, fold, norm, weighting)
