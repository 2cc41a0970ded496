"""Vector quantisation for the VQ first stage."""

from ldm.modules.vqvae.quantize import VectorQuantizer, VectorQuantizer2

__all__ = ["VectorQuantizer", "VectorQuantizer2"]
