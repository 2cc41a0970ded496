"""How a conditioning reaches the UNet, and conditioning dropout for classifier-free guidance training."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from omegaconf import ListConfig

#: ``DiffusionWrapper`` keyword for each conditioning kind (also ``ldm.models.diffusion.ddpm.__conditioning_keys__``).
CONDITIONING_KEYS = {"concat": "c_concat", "crossattn": "c_crossattn", "adm": "y"}


def as_wrapper_kwargs(cond: Any, conditioning_key: str | None) -> dict[str, Any]:
    """The keyword arguments of ``DiffusionWrapper.forward`` for ``cond``.

    A dict (the hybrid case) is passed as is; a tensor or list becomes ``{"c_concat": [...]}`` for
    ``conditioning_key="concat"`` and ``{"c_crossattn": [...]}`` otherwise.
    """
    if isinstance(cond, Mapping):
        return dict(cond)
    if not isinstance(cond, list):
        cond = [cond]
    return {"c_concat" if conditioning_key == "concat" else "c_crossattn": cond}


def unconditional_conditioning(model: Any, batch_size: int, null_label: Any = None) -> Any:
    """The conditioning of ``null_label`` (e.g. ``[""]``, the empty caption) repeated to ``batch_size``.

    τ(null_label) has batch 1 and becomes ``(batch_size, ...)`` (each entry of a list output likewise), on the
    model's device. Without ``null_label``, class-conditional models (``cond_stage_key`` ``class_label``/``cls``)
    ask their conditioner's ``get_unconditional_conditioning(batch_size, device=...)``.
    """
    if null_label is None:
        if model.cond_stage_key in ("class_label", "cls") and hasattr(model.cond_stage_model,
                                                                      "get_unconditional_conditioning"):
            labels = model.cond_stage_model.get_unconditional_conditioning(batch_size, device=model.device)
            return model.get_learned_conditioning(labels)
        raise ValueError(
            f"get_unconditional_conditioning: give a null_label for cond_stage_key {model.cond_stage_key!r} "
            '(e.g. [""] for text models).'
        )
    if isinstance(null_label, (ListConfig, tuple)):
        null_label = list(null_label)
    if isinstance(null_label, torch.Tensor):
        null_label = null_label.to(model.device)
    c = model.get_learned_conditioning(null_label)

    def widen(one: torch.Tensor) -> torch.Tensor:
        if one.shape[0] != 1:
            raise ValueError(f"null_label must give one conditioning (batch 1), got batch {one.shape[0]}.")
        return one.repeat(batch_size, *([1] * (one.ndim - 1))).to(model.device)

    return [widen(one) for one in c] if isinstance(c, list) else widen(c)


def take_batch(cond: Any, batch_size: int) -> Any:
    """The first ``batch_size`` entries of a conditioning: a tensor, a list of them, or a dict of either."""
    if cond is None:
        return None
    if isinstance(cond, Mapping):
        return {key: take_batch(value, batch_size) for key, value in cond.items()}
    if isinstance(cond, list):
        return [c[:batch_size] for c in cond]
    return cond[:batch_size]


def drop_conditioning(batch: Mapping[str, Any], ucg_training: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Replace conditioning inputs by their unconditional value, each sample independently.

    ``ucg_training`` maps a batch key to ``{"p": probability, "val": unconditional value}`` (``val`` defaults
    to ``""``, the empty caption), e.g. ``{"txt": {"p": 0.1, "val": ""}}`` or
    ``{"class_label": {"p": 0.1, "val": 1000}}``. Lists are edited element-wise, tensors with ``torch.where``.
    Draws use the global torch RNG; the input batch is not modified.
    """
    out = dict(batch)
    for key, spec in ucg_training.items():
        if key not in out:
            raise KeyError(f"ucg_training names batch key {key!r}, but the batch only has {sorted(out)}.")
        p = float(spec["p"])
        value = spec.get("val", "")
        value = "" if value is None else value
        entries = out[key]
        drop = torch.rand(len(entries)) < p
        if isinstance(entries, torch.Tensor):
            shape = (-1,) + (1,) * (entries.ndim - 1)
            fill = torch.as_tensor(value, dtype=entries.dtype, device=entries.device)
            out[key] = torch.where(drop.to(entries.device).view(shape), fill, entries)
        else:
            out[key] = [value if dropped else entry for entry, dropped in zip(entries, drop.tolist())]
    return out


def rescale_bboxes(
    bboxes: Sequence[Sequence[float]], crop_coordinates: Sequence[float]
) -> list[tuple[float, float, float, float]]:
    """Boxes ``(x0, y0, w, h)`` in image fractions → fractions of the crop ``(cx, cy, cw, ch)``.

    x0' = clip((x0 − cx) / cw), y0' = clip((y0 − cy) / ch) with clip to [0, 1]; w' = min(w / cw, 1 − x0'),
    h' = min(h / ch, 1 − y0'), so every box stays inside the crop.
    """
    cx, cy, cw, ch = crop_coordinates

    def clip(value: float) -> float:
        return max(min(value, 1.0), 0.0)

    rescaled = []
    for x0, y0, w, h in (bbox[:4] for bbox in bboxes):
        new_x0, new_y0 = clip((x0 - cx) / cw), clip((y0 - cy) / ch)
        rescaled.append((new_x0, new_y0, min(w / cw, 1.0 - new_x0), min(h / ch, 1.0 - new_y0)))
    return rescaled
