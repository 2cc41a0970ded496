"""The cross-attention conditioning of a retrieval-augmented diffusion model (RDM) at sampling time.

A prompt's CLIP text embedding ``z`` (one unit token, repeated ``n_repeat`` times) is joined by the unit CLIP
image embeddings of its k nearest database entries: ``c = [z, …, z, ê_1, …, ê_k]`` ``(B, n_repeat + k, D)``. The
unconditional branch of classifier-free guidance is the zero context of the same shape,
``eps = eps(x, 0) + s · (eps(x, c) − eps(x, 0))``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def join_neighbours(text_tokens: torch.Tensor, neighbours: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` text tokens and ``(B, k, D)`` neighbour embeddings → ``(B, T + k, D)`` on the tokens' device
    and dtype, text first."""
    extra = torch.as_tensor(neighbours).to(device=text_tokens.device, dtype=text_tokens.dtype)
    if extra.dim() != 3 or extra.shape[0] != text_tokens.shape[0] or extra.shape[2] != text_tokens.shape[2]:
        raise ValueError(f"neighbour embeddings of shape {tuple(extra.shape)} cannot join text tokens of shape "
                         f"{tuple(text_tokens.shape)}: the database's CLIP model must be the one of --clip_type")
    return torch.cat([text_tokens, extra], dim=1)


def retrieval_conditioning(
    encoder: Any,
    prompts: Sequence[str],
    searcher: Callable[[torch.Tensor, int], dict[str, Any]] | None = None,
    knn: int = 10,
    scale: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(c, uc)`` for B prompts: ``c = encoder.encode(prompts)`` ``(B, n_repeat, D)``, joined by the ``knn``
    neighbours ``searcher(c, knn)["nn_embeddings"]`` when a searcher is given; ``uc`` the zeros of c's shape, or
    None when ``scale == 1`` (no guidance)."""
    c = encoder.encode(list(prompts))
    if searcher is not None:
        c = join_neighbours(c, searcher(c, knn)["nn_embeddings"])
    return c, None if scale == 1.0 else torch.zeros_like(c)
