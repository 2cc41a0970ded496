"""Inference-only fast variants of the reference blocks, swapped in by ``ldm.inference.optimize_for_inference``."""
