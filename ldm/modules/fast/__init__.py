"""Fast variants of the reference blocks: inference-only ones swapped in by ``ldm.inference.optimize_for_inference``,
and one for CPU training swapped in by ``ldm.callbacks.FastTrainingConvs``.

- ``swap``: the one swap mechanism (``replace_modules``), the capability check for private torch ops
  (``has_torch_op``) and the refusal to run with autograd (``inference_only``).
- ``feedforward``: the gated feed-forward in row chunks, in place.
- ``blocks``: ``swap_fast_blocks``, the feed-forwards of a UNet.
- ``packed_conv``: convolutions with oneDNN-packed weights, the fused upsample-conv, ``pack_convolutions``.
- ``autoencoder``: the autoencoder's fast blocks, ``swap_fast_autoencoder``.
- ``gemm_conv``: convs with large weights and few output positions as matrix products, forward and backward
  (``GemmConv2d``, ``swap_gemm_convs``): the one fast module that trains.

Each fast module is built from a reference module and shares its weight tensors (packed convs replace theirs);
the reference modules stay what training runs, apart from ``GemmConv2d`` (an ``nn.Conv2d`` on the same
parameters, equal within float rounding).
"""
