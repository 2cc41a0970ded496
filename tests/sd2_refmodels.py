"""The SD 2.x reference cases of ``tests/refdata/sd2``: their weights rebuilt from the key-name recipe, their configs.

No weights are stored (``tests/refdata/sd2/README.md``, "key-name recipe"): parameter ``i`` of the sorted key list is
drawn from ``torch.Generator().manual_seed(base_seed + i)``, as ``N(0, 1) / √fan_in`` for matrices and kernels
(``fan_in`` = the product of all but the first dimension) and as ``1 + 0.1·N(0, 1)`` (``.weight``) or
``0.1·N(0, 1)`` (anything else) for vectors and scalars. Each case stores the keys with their shapes and the float64
sum of all values (``checksum``); :func:`load_recipe` checks all three before loading strictly.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn as nn
from omegaconf import OmegaConf

from ldm.util import instantiate_from_config

SD2 = Path(__file__).parent / "refdata" / "sd2"
#: Relative tolerance on the stored float64 checksum (the values are float32 draws).
CHECKSUM_RTOL = 1e-9


@functools.cache
def load_vectors(name: str) -> dict[str, Any]:
    """``refdata/sd2/vectors/<name>`` (``unet.pt``, ``v.pt``); cached: do not mutate."""
    return torch.load(SD2 / "vectors" / name, weights_only=True)


def build_config(name: str) -> nn.Module:
    """The model of ``refdata/sd2/configs/<name>`` (``model: {target, params}``), freshly built; the tiny OpenCLIP
    text tower ``sd2ref-tiny-text`` its configs name is registered with open_clip first."""
    open_clip.add_model_config(str(SD2 / "configs" / "sd2ref-tiny-text.json"))
    return instantiate_from_config(OmegaConf.load(SD2 / "configs" / name).model)


def recipe_tensor(key: str, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """One parameter of the recipe: scaled normal for ≥ 2-D shapes, ``1 + 0.1·N`` / ``0.1·N`` otherwise."""
    draw = torch.randn(shape, generator=generator)
    if len(shape) >= 2:
        return draw * float(1 / math.sqrt(math.prod(shape[1:])))
    offset = 1.0 if key.endswith(".weight") else 0.0
    return offset + 0.1 * draw


def recipe_state_dict(param_shapes: dict[str, Any], base_seed: int) -> dict[str, torch.Tensor]:
    """Every parameter of ``param_shapes`` (``{key: shape}``) from the key-name recipe, keyed as given."""
    weights = {}
    for offset, key in enumerate(sorted(param_shapes)):
        generator = torch.Generator().manual_seed(base_seed + offset)
        weights[key] = recipe_tensor(key, tuple(param_shapes[key]), generator)
    return weights


def _shapes(named: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value) for key, value in named.items()}


def load_recipe(model: nn.Module, case: dict[str, Any]) -> nn.Module:
    """Load ``case``'s recipe weights into ``model`` strictly (buffers keep their constructed values).

    Checks first that the model's parameters are exactly the case's keys and shapes and that the rebuilt weights
    reproduce the stored checksum; returns ``model``.
    """
    own = {key: tuple(p.shape) for key, p in model.named_parameters()}
    stored = _shapes(case["param_shapes"])
    missing, extra = sorted(stored.keys() - own.keys()), sorted(own.keys() - stored.keys())
    if missing or extra:
        raise AssertionError(f"parameter keys differ: missing {missing[:5]}, unexpected {extra[:5]}")
    wrong = {key: (own[key], shape) for key, shape in stored.items() if own[key] != shape}
    if wrong:
        raise AssertionError(f"parameter shapes differ (ours, original): {dict(list(wrong.items())[:5])}")
    weights = recipe_state_dict(case["param_shapes"], case["base_seed"])
    total = sum(w.double().sum().item() for w in weights.values())
    if not math.isclose(total, case["checksum"], rel_tol=CHECKSUM_RTOL):
        raise AssertionError(f"recipe checksum {total!r} != stored {case['checksum']!r}")
    state = model.state_dict()
    state.update(weights)
    model.load_state_dict(state, strict=True)
    return model
