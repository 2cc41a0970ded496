"""Inference-only fast variants of the reference blocks, swapped in by ``ldm.inference.optimize_for_inference``.

- ``swap``: the one swap mechanism (``replace_modules``), the capability check for private torch ops
  (``has_torch_op``) and the refusal to run with autograd (``inference_only``).
- ``feedforward``: the gated feed-forward in row chunks, in place.
- ``blocks``: ``swap_fast_blocks``, the feed-forwards of a UNet.
- ``packed_conv``: convolutions with oneDNN-packed weights, the fused upsample-conv, ``pack_convolutions``.
- ``autoencoder``: the autoencoder's fast blocks, ``swap_fast_autoencoder``.

Each fast module is built from a reference module and shares its weight tensors (packed convs replace theirs);
the reference modules stay what training runs.
"""
