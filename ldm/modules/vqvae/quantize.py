"""Vector quantisation of the VQ first stage (taming-transformers' ``VectorQuantizer2``).

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
        self.n_e = n_e
        self.e_dim = e_dim
        self.beta = beta
        self.legacy = legacy

        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

        self.remap = remap
        if remap is not None:
            self.register_buffer("used", torch.tensor(np.load(remap)))
            self.re_embed = self.used.shape[0]
            if unknown_index == "extra":
                unknown_index = self.re_embed
                self.re_embed += 1
            elif unknown_index != "random" and not isinstance(unknown_index, int):
                raise ValueError(
                    f"unknown_index={unknown_index!r} is not valid; use 'random', 'extra' or an integer index."
                )
            self.unknown_index = unknown_index
            logger.info("Remapping %d indices to %d indices. Using %s for unknown indices.",
                        n_e, self.re_embed, unknown_index)
        else:
            self.re_embed = n_e
        self.sane_index_shape = sane_index_shape

    def remap_to_used(self, inds: torch.Tensor) -> torch.Tensor:
        """Codebook indices ``(B, ...)`` -> positions in ``used``; unused codes get ``unknown_index``."""
        shape = inds.shape
        inds = inds.reshape(shape[0], -1)
        match = inds[:, :, None] == self.used.to(inds)[None, None, :]
        new = match.long().argmax(-1)
        unknown = ~match.any(-1)
        if self.unknown_index == "random":  # drawn on the CPU, as the original, so a seed gives the same codes
            new[unknown] = torch.randint(0, self.re_embed, size=new[unknown].shape).to(new.device)
        else:
            new[unknown] = self.unknown_index
        return new.reshape(shape)

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
        or ``(B, H, W)`` with ``sane_index_shape``; perplexity and one-hot encodings are None, as in the
        original (the loss measures perplexity from the indices). ``temp``, ``rescale_logits`` and
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

    def get_codebook_entry(self, indices: torch.Tensor, shape: Sequence[int] | None) -> torch.Tensor:
        """Codebook vectors of flat ``indices``; with ``shape = (B, H, W, C)`` returned as ``(B, C, H, W)``."""
        if self.remap is not None:
            if shape is None:
                raise ValueError("get_codebook_entry with remap needs shape=(B, H, W, C) to undo the remapping.")
            indices = self.unmap_to_all(indices.reshape(shape[0], -1)).reshape(-1)
        z_q = self.embedding(indices)
        if shape is not None:
            z_q = rearrange(z_q.view(*shape), "b h w c -> b c h w").contiguous()
        return z_q


VectorQuantizer = VectorQuantizer2
