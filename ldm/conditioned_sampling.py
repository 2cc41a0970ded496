"""Image conditionings of the inpainting, depth-to-image and upscaling scripts, built from image tensors.

Every function takes pixels ``(B, 3, H, W)`` in [-1, 1] (masks ``(B, 1, H, W)`` in {0, 1}, 1 = repaint) and returns
what the model's ``apply_model`` takes:

- LDM inpainting (``conditioning_key: concat``, the first stage as conditioner): c = cat[τ(x_m), m'] with
  x_m = 2 (1 − m) x₀₁ − 1 the masked image (masked pixels black), m' = 2m − 1 resized to τ's grid (nearest);
- SD 2.x inpainting (``LatentInpaintDiffusion``): c_concat = [m resized to the latent grid (nearest),
  z(x · [m < 0.5])] in ``model.concat_keys`` order (masked pixels grey);
- SD 2.x depth (``LatentDepth2ImageDiffusion``): c_concat = [the depth of the MiDaS input, or of a given depth map,
  on the latent grid, normalised per sample to [-1, 1]];
- x4 upscaling (``LatentUpscaleDiffusion``): c_concat = [x_s = √ᾱ_s x_low + √(1 − ᾱ_s) ε], c_adm = s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image

from ldm.inference import encode_latents, latent_factor
from ldm.models.diffusion.finetune_diffusion import binarize_mask, masked_image, normalize_depth

Conditioning = dict[str, Any]

#: The MiDaS DPT input side the released depth model was trained with, and the multiple its sides are rounded to.
MIDAS_SIDE = 384
MIDAS_MULTIPLE = 32


def pil_to_pixels(image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
    """An RGB image (resized with Lanczos to ``size = (W, H)`` when given and different) as ``(1, 3, H, W)`` in
    [-1, 1]: x = 2 · u8 / 255 − 1."""
    if size is not None and image.size != tuple(size):
        image = image.resize(tuple(size), resample=Image.LANCZOS)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    return rearrange(pixels, "h w c -> 1 c h w") * 2.0 - 1.0


def pil_to_mask(mask: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """A grey-scale mask resized (bilinear) to ``size = (W, H)`` as ``(1, 1, H, W)`` in {0, 1}: 1 where the grey
    level is at least half of 255 (the region to repaint)."""
    if mask.size != tuple(size):
        mask = mask.resize(tuple(size), resample=Image.BILINEAR)
    grey = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0)
    return binarize_mask(grey[None, None])


def pil_to_depth(depth: Image.Image) -> torch.Tensor:
    """A depth-map image (bright = near, as MiDaS's inverse depth) as ``(1, 1, H, W)`` in [0, 1]."""
    return torch.from_numpy(np.asarray(depth.convert("L"), dtype=np.float32) / 255.0)[None, None]


# ------------------------------------------------------------------------------------------------------------------
# LDM inpainting (latent-diffusion's scripts/inpaint.py)
# ------------------------------------------------------------------------------------------------------------------


def ldm_inpainting_batch(image: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The LDM inpainting model's inputs in [-1, 1] from ``image`` ``(B, 3, H, W)`` in [0, 1] and a binary ``mask``
    ``(B, 1, H, W)``: image 2x − 1, mask 2m − 1 and masked_image 2 (1 − m) x − 1."""
    return {name: 2.0 * value - 1.0 for name, value in
            (("image", image), ("mask", mask), ("masked_image", (1.0 - mask) * image))}


@torch.no_grad()
def ldm_inpainting_conditioning(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """c = cat[τ(masked_image), mask resized to τ's grid (nearest)] ``(B, C_τ + 1, h, w)``, τ =
    ``model.cond_stage_model.encode`` (the first stage's pre-quantisation latent for the LDM inpainting model)."""
    encoded = model.cond_stage_model.encode(batch["masked_image"])
    grid_mask = F.interpolate(batch["mask"], size=encoded.shape[-2:])
    return torch.cat([encoded, grid_mask], dim=1)


def paste_prediction(image_u8: np.ndarray, predicted_u8: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(1 − m) · image + m · prediction for a binary mask ``(H, W)``, on 8-bit ``(H, W, 3)`` arrays: the pixels
    outside the mask are the input's own bytes."""
    return np.where(mask[..., None] > 0.5, predicted_u8, image_u8)


# ------------------------------------------------------------------------------------------------------------------
# SD 2.x inpainting
# ------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def inpainting_concat(model: Any, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """c_concat ``(B, Σ channels, h, w)`` of an SD 2.x inpainting model for ``image`` ``(B, 3, H, W)`` in [-1, 1]
    and ``mask`` ``(B, 1, H, W)`` in {0, 1}: per ``model.concat_keys``, the masked image x · [m < 0.5] encoded to
    latents (``model.masked_image_key``) or the mask resized to the latent grid (nearest)."""
    inputs = {"mask": mask, model.masked_image_key: masked_image(image, mask)}
    grid = tuple(size // latent_factor(model) for size in image.shape[-2:])
    pieces = []
    for key in model.concat_keys:
        if key not in inputs:
            raise ValueError(f"the model's concat_keys name {key!r}, which inpainting has no input for; "
                             f"it knows 'mask' and {model.masked_image_key!r}")
        if key == model.masked_image_key:
            pieces.append(encode_latents(model, inputs[key]))
        else:
            pieces.append(F.interpolate(inputs[key], size=grid))
    return torch.cat(pieces, dim=1)


def hybrid_conditioning(c_concat: torch.Tensor, c: Any, uc: Any, c_adm: torch.Tensor | None = None
                        ) -> tuple[Conditioning, Conditioning | None]:
    """``({"c_concat": [c_concat], "c_crossattn": [c] (, "c_adm": c_adm)}, the same with uc)``; the unconditional
    dict is None when ``uc`` is (no guidance). Both branches share the image conditioning."""

    def pack(text: Any) -> Conditioning:
        cond = {"c_concat": [c_concat], "c_crossattn": [text]}
        if c_adm is not None:
            cond["c_adm"] = c_adm
        return cond

    return pack(c), None if uc is None else pack(uc)


# ------------------------------------------------------------------------------------------------------------------
# SD 2.x depth-to-image
# ------------------------------------------------------------------------------------------------------------------


def midas_size(width: int, height: int, side: int = MIDAS_SIDE, multiple: int = MIDAS_MULTIPLE) -> tuple[int, int]:
    """``(W', H')`` of the DPT input (the MiDaS "minimal" resize): one scale k for both sides, k = side / W or
    side / H, whichever is closer to 1, then each side rounded (half to even) to a multiple of ``multiple``."""
    by_width, by_height = side / width, side / height
    scale = by_width if abs(1 - by_width) < abs(1 - by_height) else by_height
    return tuple(max(multiple, int(np.round(scale * n / multiple)) * multiple) for n in (width, height))


def midas_input(pixels: torch.Tensor) -> torch.Tensor:
    """The depth model's input for ``pixels`` ``(B, 3, H, W)`` in [-1, 1]: bicubic resize to :func:`midas_size`,
    still in [-1, 1] (the DPT models' normalisation (u − 0.5) / 0.5 of u ∈ [0, 1])."""
    width, height = midas_size(pixels.shape[-1], pixels.shape[-2])
    return F.interpolate(pixels.float(), size=(height, width), mode="bicubic", align_corners=False)


@torch.no_grad()
def depth_concat(model: Any, pixels: torch.Tensor, latent_size: Sequence[int],
                 depth_map: torch.Tensor | None = None) -> torch.Tensor:
    """c_concat ``(B, 1, h, w)`` of a depth-to-image model: the model's own ``depth_conditioning`` of the MiDaS
    input of ``pixels``, or, with ``depth_map`` ``(B, 1, H', W')`` (bright = near), that map resized (bicubic) to
    ``latent_size`` and normalised per sample to [-1, 1] the same way."""
    if depth_map is None:
        return model.depth_conditioning(midas_input(pixels), tuple(latent_size))
    depth = F.interpolate(depth_map.float(), size=tuple(latent_size), mode="bicubic", align_corners=False)
    return normalize_depth(depth)


# ------------------------------------------------------------------------------------------------------------------
# x4 upscaling
# ------------------------------------------------------------------------------------------------------------------


def noise_augmented(model: Any, low_res: torch.Tensor, noise_level: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x_s (B, 3, h, w), s (B,) int64)``: ``model.low_scale_model`` noises the low-resolution image to level s
    (x_s = √ᾱ_s x + √(1 − ᾱ_s) ε, ε from the global RNG)."""
    levels = torch.full((low_res.shape[0],), noise_level, dtype=torch.long, device=low_res.device)
    return model.low_scale_model(low_res.float(), noise_level=levels)
