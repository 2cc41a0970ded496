"""The first-stage autoencoder's module path: ``Encoder``, ``Decoder`` and their layers, under the names configs
and checkpoints use.

The code lives in two modules: the layers (swish, ``Normalize``, ``Upsample``, ``Downsample``, ``ResnetBlock``,
``AttnBlock``, ``LinAttnBlock``, ``make_attn``) in ``autoencoder_blocks``, the networks built from them
(``Encoder``, ``Decoder`` and their level table) in ``encoder_decoder``. This path also serves ``Model``,
``get_timestep_embedding`` and the latent rescalers, which are built from the same layers elsewhere; those
modules import the layers from ``autoencoder_blocks`` and ``encoder_decoder``, never from here, so that nothing
imports in a circle. Inference-only fast variants of the layers: ``ldm.modules.fast.autoencoder``.
"""

from __future__ import annotations

from ldm.legacy.pixel_unet import Model, get_timestep_embedding
from ldm.legacy.rescalers import (
    FirstStagePostProcessor,
    LatentRescaler,
    MergedRescaleDecoder,
    MergedRescaleEncoder,
    Resize,
    SimpleDecoder,
    UpsampleDecoder,
    Upsampler,
)
from ldm.modules.diffusionmodules.autoencoder_blocks import (
    ATTN_TYPES,
    AttnBlock,
    Downsample,
    LinAttnBlock,
    MemoryEfficientAttnBlock,
    MemoryEfficientCrossAttentionWrapper,
    Normalize,
    ResnetBlock,
    Upsample,
    make_attn,
    nonlinearity,
)
from ldm.modules.diffusionmodules.encoder_decoder import Decoder, Encoder

#: The original's flag for its xformers path; this package never uses xformers (PyTorch's SDPA is its fast path).
XFORMERS_IS_AVAILBLE = False

__all__ = [
    "ATTN_TYPES",
    "AttnBlock",
    "Decoder",
    "Downsample",
    "Encoder",
    "FirstStagePostProcessor",
    "LatentRescaler",
    "LinAttnBlock",
    "MemoryEfficientAttnBlock",
    "MemoryEfficientCrossAttentionWrapper",
    "MergedRescaleDecoder",
    "MergedRescaleEncoder",
    "Model",
    "Normalize",
    "ResnetBlock",
    "Resize",
    "SimpleDecoder",
    "Upsample",
    "UpsampleDecoder",
    "Upsampler",
    "XFORMERS_IS_AVAILBLE",
    "get_timestep_embedding",
    "make_attn",
    "nonlinearity",
]
