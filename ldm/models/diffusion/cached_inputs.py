"""Stage-2 inputs from a latent cache: a batch that carries the frozen encoders' cached outputs skips them.

``scripts/cache_latents.py`` writes the cache and :class:`ldm.data.latent_cache.LatentCacheDataset` reads it; its
items carry these batch keys (``B`` samples):

- ``cached_moments`` ``(B, 2C, h, w)``: ``[mean, logvar]`` of a KL first stage's posterior. Every step draws
  ``z = scale_factor · (mean + exp(½ logvar) · ε)``, ε ~ N(0, I), exactly as :meth:`LatentDiffusion.get_input`
  does on the fly (the same ``DiagonalGaussianDistribution.sample``, the same draw from the global RNG).
- ``cached_z`` ``(B, C, h, w)``: what a VQ or identity first stage's ``encode`` returns; ``z = scale_factor · it``.
- ``cached_cond`` ``(B, ...)``: ``c = τ(y)`` of a frozen conditioner (``cond_stage_trainable: false``).
- ``cached_uncond`` ``(B, ...)`` and ``cached_uncond_value``: ``τ(v)`` of the unconditional input ``v`` (``""``
  for captions) and ``v`` itself. Sample ``i`` takes ``cached_uncond[i]`` wherever its raw conditioning input
  ``batch[cond_stage_key][i]`` equals ``v``. ``ucg_training`` replaces dropped captions by its ``val`` before
  ``get_input`` runs, so with ``val == v`` these are exactly the dropped samples (and any whose caption was ``v``
  already, for which τ gives the same tensor): conditioning dropout keeps working on cached embeddings.

The raw conditioning inputs (captions, class labels) travel with the cached tensors, so ``ucg_training`` and the
image logs see them as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from ldm.models.diffusion.denoising_diffusion import images_channels_first
from ldm.modules.distributions.distributions import DiagonalGaussianDistribution
from ldm.util import SettingError

CACHED_MOMENTS = "cached_moments"
CACHED_Z = "cached_z"
CACHED_COND = "cached_cond"
CACHED_UNCOND = "cached_uncond"
CACHED_UNCOND_VALUE = "cached_uncond_value"

#: Conditioning keys whose raw batch value (a list) is the conditioner's input as it is.
TEXT_KEYS = ("caption", "txt", "coordinates_bbox")


def has_cached_latents(batch: Mapping[str, Any]) -> bool:
    """Whether ``batch`` carries a first-stage cache (``cached_moments`` or ``cached_z``)."""
    return CACHED_MOMENTS in batch or CACHED_Z in batch


def conditioning_input(model: Any, batch: Mapping[str, Any], cond_key: str, x: torch.Tensor | None) -> Any:
    """The conditioner's input ``y`` for ``cond_key``, as ``get_input`` hands it over.

    The first stage's images ``x`` ``(B, 3, H, W)`` when ``cond_key`` is the first-stage key; a caption/box list as
    it is; the whole batch for ``class_label`` (``ClassEmbedder`` picks its key); any other key's images
    ``(B, H, W, C)`` channels first on the model's device.
    """
    if cond_key == model.first_stage_key:
        if x is None:
            raise SettingError(
                f"cond_stage_key {cond_key!r} is the first-stage key, whose images a latent cache does not hold; "
                "cache the conditioning too (a frozen cond stage) or train from the images."
            )
        return x
    if cond_key in TEXT_KEYS:
        return batch[cond_key]
    if cond_key == "class_label":
        return batch
    return images_channels_first(batch[cond_key]).to(model.device)


def first_stage_output(batch: Mapping[str, Any], device: torch.device | str, bs: int | None = None) -> Any:
    """The cached ``encode`` result of the first ``bs`` samples (all without ``bs``): a posterior rebuilt from
    ``cached_moments``, or the ``cached_z`` tensor; float32 on ``device`` whatever the storage precision."""
    if CACHED_MOMENTS in batch:
        return DiagonalGaussianDistribution(batch[CACHED_MOMENTS][:bs].to(device, torch.float32))
    return batch[CACHED_Z][:bs].to(device, torch.float32)


def first_stage_latents(model: Any, batch: Mapping[str, Any], key: str) -> torch.Tensor:
    """z = scale_factor · (a draw from the posterior) of ``batch``: from the cache when it has one, else by
    encoding ``batch[key]``. (``scale_by_std`` measures std(z) on these.)"""
    if has_cached_latents(batch):
        encoded = first_stage_output(batch, model.device)
    else:
        encoded = model.encode_first_stage(images_channels_first(batch[key]).to(model.device))
    return model.get_first_stage_encoding(encoded).detach()


def _equal_to(raw: Any, values: Any) -> torch.Tensor:
    """``(B,)`` bool: sample i's raw conditioning input equals ``values[i]`` (lists or tensors)."""
    if isinstance(raw, torch.Tensor):
        return raw.reshape(raw.shape[0], -1).eq(torch.as_tensor(values).to(raw).reshape(raw.shape[0], -1)).all(1)
    return torch.tensor([entry == value for entry, value in zip(raw, values)], dtype=torch.bool)


def _first_value(values: Any) -> Any:
    first = values[0]
    return first.item() if isinstance(first, torch.Tensor) else first


def _check_dropout_value(model: Any, cond_key: str, batch: Mapping[str, Any]) -> None:
    """``ucg_training[cond_key].val`` must be the input whose embedding the cache stores as ``uncond``."""
    spec = getattr(model, "ucg_training", {}).get(cond_key)
    if spec is None:
        return
    if CACHED_UNCOND not in batch:
        raise SettingError(
            f"model.params.ucg_training drops {cond_key!r}, but the latent cache has no unconditional embedding; "
            "re-create it with scripts/cache_latents.py --uncond_value (the ucg_training val)."
        )
    wanted = spec.get("val", "")
    wanted = "" if wanted is None else wanted
    cached = _first_value(batch[CACHED_UNCOND_VALUE])
    if cached != wanted:
        raise SettingError(
            f"model.params.ucg_training.{cond_key}.val is {wanted!r}, but the latent cache holds the embedding of "
            f"{cached!r}; re-create the cache with --uncond_value {wanted!r}."
        )


def cached_conditioning(model: Any, batch: Mapping[str, Any], cond_key: str) -> torch.Tensor:
    """c ``(B, ...)`` float32: ``cached_cond``, with ``cached_uncond`` where the raw input is the unconditional one."""
    if model.cond_stage_trainable:
        raise SettingError(
            "the latent cache holds a frozen conditioner's embeddings (cached_cond), but model.params."
            "cond_stage_trainable is true; train from a cache written without them (--no_cond)."
        )
    _check_dropout_value(model, cond_key, batch)
    cond = batch[CACHED_COND].to(model.device, torch.float32)
    if CACHED_UNCOND in batch and cond_key in batch:
        dropped = _equal_to(batch[cond_key], batch[CACHED_UNCOND_VALUE]).to(model.device)
        uncond = batch[CACHED_UNCOND].to(model.device, torch.float32)
        cond = torch.where(dropped.view(-1, *([1] * (cond.ndim - 1))), uncond, cond)
    return cond


def cached_get_input(
    model: Any,
    batch: Mapping[str, Any],
    return_first_stage_outputs: bool = False,
    force_c_encode: bool = False,
    cond_key: str | None = None,
    return_original_cond: bool = False,
    bs: int | None = None,
    return_x: bool = False,
) -> list[Any]:
    """:meth:`LatentDiffusion.get_input` for a cached batch: ``[z, c]`` (+ ``x, xrec``, + ``x``, + ``xc``).

    z is drawn from the cached posterior; c is ``cached_cond`` (see :func:`cached_conditioning`) or, without it, the
    raw conditioning encoded as on the fly (raw when the conditioner is trainable, unless ``force_c_encode``). The
    cache holds no images: ``x`` and ``xrec`` are both the decoded latents D(z / scale_factor).
    """
    z = model.get_first_stage_encoding(first_stage_output(batch, model.device, bs)).detach()
    c = xc = None
    if model.model.conditioning_key is not None and not model.force_null_conditioning:
        cond_key = cond_key or model.cond_stage_key
        xc = batch.get(cond_key)
        if CACHED_COND in batch:
            c = cached_conditioning(model, batch, cond_key)
        else:
            xc = conditioning_input(model, batch, cond_key, None)
            c = model.get_learned_conditioning(xc) if not model.cond_stage_trainable or force_c_encode else xc
        if bs is not None:
            c = c[:bs]
    out: list[Any] = [z, c]
    if return_first_stage_outputs or return_x:
        x = model.decode_first_stage(z)
        if return_first_stage_outputs:
            out.extend([x, x])
        if return_x:
            out.append(x)
    if return_original_cond:
        out.append(xc)
    return out
