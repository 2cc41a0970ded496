"""Does a checkpoint belong to the model it was loaded into? A load that fills fewer than half of the model's own
tensors is a checkpoint of another model (or another layout), and sampling with it gives noise with exit status 0;
:func:`check_enough_loaded` refuses it with one line saying how many tensors matched and what the file looks like.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from ldm.checkpoint import LoadReport

logger = logging.getLogger(__name__)

#: Keys a model may have that a checkpoint may legitimately lack: the EMA copy (raw-only checkpoints).
OPTIONAL_PREFIXES = ("model_ema.",)
#: The smallest share of the model's (non-optional) tensors a checkpoint must fill.
MIN_LOADED_SHARE = 0.5

#: (key prefixes that must all occur, description), first match wins.
_LAYOUTS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("model.diffusion_model.", "first_stage_model."), "a latent diffusion model (UNet, first stage and conditioner)"),
    (("model.diffusion_model.",), "a diffusion model without a first stage (pixel-space DDPM)"),
    (("encoder.", "decoder.", "quant_conv."), "a first-stage autoencoder (AutoencoderKL / VQModel)"),
    (("first_stage_model.",), "a first-stage autoencoder stored inside a diffusion checkpoint"),
    (("down_blocks.", "up_blocks."), "a diffusers UNet or VAE (convert it with scripts/convert_diffusers.py)"),
    (("text_model.",), "a CLIP text encoder"),
    (("input_blocks.", "output_blocks."), "a bare UNetModel (no model.diffusion_model. prefix)"),
    (("pretrained.", "scratch."), "a MiDaS depth model"),
)


def describe_keys(keys: Iterable[str], shown: int = 4) -> str:
    """What a state dict's keys look like: its size, its most common top-level prefixes, and the kind of model
    those prefixes belong to (``"unknown layout"`` when none fits)."""
    keys = list(keys)
    if not keys:
        return "it holds no tensors"
    heads = Counter(key.split(".", 1)[0] for key in keys)
    common = ", ".join(f"{head}.* ({count})" for head, count in heads.most_common(shown))
    more = f" and {len(heads) - shown} more" if len(heads) > shown else ""
    kind = next((text for prefixes, text in _LAYOUTS if all(any(k.startswith(p) for k in keys) for p in prefixes)),
                "an unknown layout")
    return f"its {len(keys)} tensors are under {common}{more}: it looks like {kind}"


def check_enough_loaded(module: torch.nn.Module, report: LoadReport, state_dict: Mapping[str, Any], source: str,
                        allow_partial: bool = False) -> int:
    """The number of ``module``'s tensors ``state_dict`` filled (``report`` from ``apply_state_dict``).

    Counted over the module's keys outside :data:`OPTIONAL_PREFIXES`; fewer than ``MIN_LOADED_SHARE`` of them raises
    ``ValueError`` naming ``source``, the counts and :func:`describe_keys` of the file, unless ``allow_partial``
    (then it is a warning).
    """
    needed = [key for key in module.state_dict() if not key.startswith(OPTIONAL_PREFIXES)]
    missing = {key for key in report.missing if not key.startswith(OPTIONAL_PREFIXES)}
    loaded = sum(key not in missing for key in needed)
    if not needed or loaded >= MIN_LOADED_SHARE * len(needed):
        return loaded
    line = (f"{source} filled only {loaded} of the {type(module).__name__}'s {len(needed)} tensors; "
            f"{describe_keys(state_dict.keys())}")
    if allow_partial:
        logger.warning("%s; sampling anyway (--allow_partial_ckpt)", line)
        return loaded
    raise ValueError(f"{line}. Pass the checkpoint that belongs to --config (or --allow_partial_ckpt to sample "
                     "with the rest left random)")
