"""Alias of :mod:`ldm.legacy.rescalers`, where the latent rescalers and small decoders live."""

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

__all__ = [
    "FirstStagePostProcessor",
    "LatentRescaler",
    "MergedRescaleDecoder",
    "MergedRescaleEncoder",
    "Resize",
    "SimpleDecoder",
    "UpsampleDecoder",
    "Upsampler",
]
