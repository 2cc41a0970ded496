"""MiDaS monocular depth (DPT) — the depth stage of the SD 2.x depth-to-image model.

``api.MiDaSInference`` is what ``configs/stable-diffusion/v2-midas-inference.yaml`` names; the architecture is
split by job: ``backbone`` (ViT / hybrid-ViT feature taps), ``reassemble`` (tokens → feature maps), ``fusion``
(the refine-net decoder), ``head`` (the depth head) and ``dpt`` (the whole network). ``midas`` is the original
MiDaS module layout (``midas.dpt_depth``, ``midas.midas_net``, ...) on these parts, plus the MiDaS v2.1 networks.
"""
