"""The original MiDaS module layout (``ldm.modules.midas.midas.*`` of SD 2.x), on this project's MiDaS.

``dpt_depth`` (DPT / DPTDepthModel), ``midas_net`` (MidasNet, ResNeXt-101 WSL encoder), ``midas_net_custom``
(MidasNet_small, EfficientNet-Lite3 encoder, and ``fuse_model``), ``blocks`` (fusion blocks), ``vit`` (readout
operations and the ViT feature helpers), ``transforms`` (the sample-dict transforms, without OpenCV) and
``base_model`` (``BaseModel.load``). Every network has the state-dict keys of the original; none downloads
weights: a ``path`` argument loads them from a local file.
"""
