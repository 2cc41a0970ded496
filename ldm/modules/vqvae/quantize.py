"""Vector quantisation of the VQ first stage (``VectorQuantizer2``).

Every latent vector ``z[b, :, i, j]`` is replaced by its nearest codebook entry ``e_k``
(``k = argmin_k ‖z − e_k‖²``); gradients pass straight through to ``z``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
from einops import rearrange

logger = logging.getLogger(__name__)


class VectorQuantizer2(nn.Module):
    """Nearest-neighbour quantiser with ``n_e`` codes of dimension ``e_dim``.

    Loss (``legacy=True``, the default the released models were trained with, where β weights the codebook
    term): ``‖sg[z_q] − z‖² + β‖z_q − sg[z]‖²``; ``legacy=False`` gives the VQ-VAE weighting
    ``β‖sg[z_q] − z‖² + ‖z_q − sg[z]‖²`` (means over all elements).

    ``remap`` is a ``.npy`` file of the used code indices: returned indices are then positions in that list,
    codes outside it become ``unknown_index`` (``"random"``, ``"extra"`` = one extra index, or an int).
    ``sane_index_shape`` returns indices as ``(B, H, W)`` instead of flat.
    """

    def __init__(
        self,
        n_e: int,
        e_dim: int,
        beta: float,
        remap: str | None = None,
        unknown_index: str | int = "random",
        sane_index_shape: bool = False,
        legacy: bool = True,
    ) -> None:
        super().__init__()
        self.n_e, self.e_dim, self.beta, self.legacy = n_e, e_dim, beta, legacy
        self.sane_index_shape = sane_index_shape
        self.embedding = nn.Embedding(n_e, e_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / n_e, 1.0 / n_e)
        self.remap = remap
        self.re_embed = n_e  # size of the index space the quantiser returns
        if remap is not None:
            self._use_code_subset(remap, unknown_index)

    def _use_code_subset(self, path: str, unknown_index: str | int) -> None:
        """Load the used code indices from ``path`` into the ``used`` buffer and set ``re_embed`` to their number
        (one more with ``unknown_index="extra"``, which then stands for every unused code)."""
        if unknown_index not in ("random", "extra") and not isinstance(unknown_index, int):
            raise ValueError(
                f"unknown_index={unknown_index!r} is not valid; use 'random', 'extra' or an integer index."
            )
        self.register_buffer("used", torch.tensor(np.load(path)))
        self.re_embed = len(self.used)
        if unknown_index == "extra":
            unknown_index, self.re_embed = self.re_embed, self.re_embed + 1
        self.unknown_index = unknown_index
        logger.info("VQ remap: %d codes -> %d indices, unused codes -> %s", self.n_e, self.re_embed, unknown_index)

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Codebook indices ``(B, ...)`` -> positions in ``used``; unused codes get ``unknown_index``.

        ``"random"`` draws the replacements with the CPU generator, so a seed gives the same codes on any device.
        """
        flat = inds.reshape(inds.shape[0], -1)  # (B, N)
        hits = flat[..., None] == self.used.to(flat)  # (B, N, len(used))
        positions = hits.long().argmax(dim=-1)
        missing = ~hits.any(dim=-1)
        if self.unknown_index == "random":
            count = int(missing.sum())
            positions[missing] = torch.randint(0, self.re_embed, size=(count,)).to(positions.device)
        else:
            positions[missing] = self.unknown_index
        return positions.reshape(inds.shape)

    def unmap_to_all(self, inds: torch.Tensor) -> torch.Tensor:
        """Positions in ``used`` ``(B, ...)`` -> codebook indices; the extra index maps to ``used[0]``."""
        shape = inds.shape
        inds = inds.reshape(shape[0], -1)
        used = self.used.to(inds)
        inds = torch.where(inds >= used.shape[0], torch.zeros_like(inds), inds)
        return used[inds].reshape(shape)

    def forward(
        self,
        z: torch.Tensor,
        temp: float | None = None,
        rescale_logits: bool = False,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[None, None, torch.Tensor]]:
        """``z (B, e_dim, H, W)`` -> ``(z_q (B, e_dim, H, W), loss (), (None, None, indices))``.

        ``z_q = z + sg[e_k − z]`` (straight-through). Indices are ``(B·H·W,)``, ``(B·H·W, 1)`` with ``remap``,
        or ``(B, H, W)`` with ``sane_index_shape``; perplexity and one-hot encodings are None (the loss
        measures perplexity from the indices). ``temp``, ``rescale_logits`` and
        ``return_logits`` exist for call compatibility with the Gumbel quantizer and must keep their defaults.
        """
        if temp not in (None, 1.0) or rescale_logits or return_logits:
            raise ValueError(
                "VectorQuantizer2 is deterministic: temp must be None or 1.0 and rescale_logits/return_logits "
                "False (they are only for interface compatibility with a Gumbel quantizer)."
            )
        z = rearrange(z, "b c h w -> b h w c").contiguous()
        z_flattened = z.view(-1, self.e_dim)
        codebook = self.embedding.weight
        # ‖z − e‖² = ‖z‖² + ‖e‖² − 2 z·e, shape (B·H·W, n_e)
        distances = (
            z_flattened.pow(2).sum(dim=1, keepdim=True) + codebook.pow(2).sum(dim=1) - 2 * z_flattened @ codebook.t()
        )
        min_encoding_indices = torch.argmin(distances, dim=1)
        z_q = self.embedding(min_encoding_indices).view(z.shape)

        commitment = torch.mean((z_q.detach() - z) ** 2)
        codebook_term = torch.mean((z_q - z.detach()) ** 2)
        if self.legacy:
            loss = commitment + self.beta * codebook_term
        else:
            loss = self.beta * commitment + codebook_term

        z_q = z + (z_q - z).detach()
        z_q = rearrange(z_q, "b h w c -> b c h w").contiguous()

        if self.remap is not None:
            min_encoding_indices = self.remap_to_used(min_encoding_indices.reshape(z.shape[0], -1)).reshape(-1, 1)
        if self.sane_index_shape:
            min_encoding_indices = min_encoding_indices.reshape(z_q.shape[0], z_q.shape[2], z_q.shape[3])
        return z_q, loss, (None, None, min_encoding_indices)

    def _unmap_flat(self, positions: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
        """Flat positions in ``used`` -> flat codebook indices (the batch size comes from ``shape``)."""
        if shape is None:
            raise ValueError("get_codebook_entry with remap needs shape=(B, H, W, C) to undo the remapping.")
        return self.unmap_to_all(positions.reshape(shape[0], -1)).reshape(-1)

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
        """Codebook vectors of flat ``indices``; with ``shape = (B, H, W, C)`` returned as ``(B, C, H, W)``."""
        if self.remap is not None:
            indices = self._unmap_flat(indices, shape)
        vectors = self.embedding(indices)  # (N, e_dim)
        if shape is None:
            return vectors
        return vectors.view(*shape).permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)


VectorQuantizer = VectorQuantizer2
