"""Checkpoint conversion between this package's (the original CompVis) layout and Hugging Face diffusers'.

``unet``, ``vae``, ``clip_text`` and ``openclip_text`` hold the key mappings of one model each; ``pipeline`` turns a
whole ``LatentDiffusion`` checkpoint into a ``StableDiffusionPipeline`` folder and back.
"""
