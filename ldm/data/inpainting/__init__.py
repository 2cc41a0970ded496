"""Inpainting training data helpers: synthetic masks (:mod:`ldm.data.inpainting.synthetic_mask`)."""
