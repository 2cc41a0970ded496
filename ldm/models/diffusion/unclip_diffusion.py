"""``ImageEmbeddingConditionedLatentDiffusion``: Stable unCLIP, text-to-image also conditioned on a CLIP image
embedding.

The embedding e = E_img(image) is noise-augmented to level s (``CLIPEmbeddingNoiseAugmentation``) and joined with
the embedding of s: c_adm = cat([e_s, emb(s)]) ``(B, D + timestep_dim)``; with ``conditioning_key: crossattn-adm``
the UNet cross-attends to the text and takes c_adm as its ``y`` (``num_classes: "sequential"``). In training each
sample's c_adm is zeroed with probability ``embedding_dropout`` (for guidance on the image embedding).
Configs name the class ``ldm.models.diffusion.ddpm.ImageEmbeddingConditionedLatentDiffusion``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn

from ldm.models.diffusion.concat_logging import guided_samples
from ldm.models.diffusion.denoising_diffusion import images_channels_first
from ldm.models.diffusion.diffusion_wrapper import freeze_module
from ldm.models.diffusion.image_logging import conditioning_log, select_keys
from ldm.models.diffusion.latent_diffusion import LatentDiffusion
from ldm.util import SettingError, instantiate_from_config


def build_embedder(config: Any, freeze: bool) -> nn.Module:
    """The image embedder of ``model.params.embedder_config``; frozen (eval for good, no gradients) if ``freeze``."""
    embedder = instantiate_from_config(config, name="model.params.embedder_config")
    return freeze_module(embedder) if freeze else embedder


def build_noise_augmentor(config: Any) -> nn.Module | None:
    """The frozen noise augmentor of ``model.params.noise_aug_config`` (None without one)."""
    if config is None:
        return None
    augmentor = instantiate_from_config(config, name="model.params.noise_aug_config")
    if not isinstance(augmentor, nn.Module):
        raise SettingError(f"noise_aug_config must build an nn.Module, got {type(augmentor).__name__}.")
    return freeze_module(augmentor)


class ImageEmbeddingConditionedLatentDiffusion(LatentDiffusion):
    """LatentDiffusion with c = {``c_crossattn``: [τ(text)], ``c_adm``: noise-augmented image embedding}.

    :param embedder_config: the image embedder (e.g. ``FrozenOpenCLIPImageEmbedder``), frozen with
        ``freeze_embedder`` (otherwise trained with the UNet).
    :param embedding_key: batch key of the image to embed, channel-last ``(B, H, W, 3)`` in [-1, 1].
    :param embedding_dropout: probability of zeroing a sample's c_adm in training.
    :param noise_aug_config: the noise augmentor (None: the embedding is used as it is).
    """

    def __init__(
        self,
        embedder_config: Any,
        embedding_key: str = "jpg",
        embedding_dropout: float = 0.5,
        freeze_embedder: bool = True,
        noise_aug_config: Any = None,
        *args: Any,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        if not 0.0 <= embedding_dropout <= 1.0:
            raise SettingError(f"embedding_dropout must be a probability in [0, 1], got {embedding_dropout}.")
        self.embedder = build_embedder(embedder_config, freeze_embedder)
        self.noise_augmentor = build_noise_augmentor(noise_aug_config)
        self.embed_key, self.embedding_dropout = embedding_key, embedding_dropout
        self.freeze_embedder = freeze_embedder

    def image_embedding_cond(self, image: torch.Tensor, noise_level: torch.Tensor | int | None = None) -> torch.Tensor:
        """c_adm of images ``(B, 3, H, W)``: cat([e_s, emb(s)], 1) with s drawn (or ``noise_level``), or e alone
        without a noise augmentor. No dropout here."""
        embedding = self.embedder(image.to(self.device))
        if self.noise_augmentor is None:
            return embedding
        args = () if noise_level is None else (noise_level,)
        noised, level_embedding = self.noise_augmentor(embedding, *args)
        return torch.cat((noised, level_embedding), 1)

    def get_input(self, batch: Mapping[str, Any], k: str, cond_key: str | None = None, bs: int | None = None,
                  **kwargs: Any) -> list[Any]:
        """``[z, {"c_crossattn": [c], "c_adm": c_adm}, ...]``, the rest as :meth:`LatentDiffusion.get_input` gives
        it for ``kwargs`` (``return_first_stage_outputs``, ``return_original_cond``, ...).

        Random draws in order: the latent posterior sample, the noise level, its noise, then (training) the
        Bernoulli keep mask, 1 − ``embedding_dropout`` per sample.
        """
        outputs = LatentDiffusion.get_input(self, batch, k, cond_key=cond_key, bs=bs, **kwargs)
        image = images_channels_first(batch[self.embed_key][:bs])
        c_adm = self.image_embedding_cond(image)
        if self.training:
            keep = torch.full((c_adm.shape[0], 1), 1.0 - self.embedding_dropout, device=c_adm.device)
            c_adm = torch.bernoulli(keep) * c_adm
        return [outputs[0], {"c_crossattn": [outputs[1]], "c_adm": c_adm}, *outputs[2:]]

    def _conditioner_parameters(self) -> list[torch.Tensor]:
        trained = [] if self.freeze_embedder else list(self.embedder.parameters())
        return super()._conditioner_parameters() + trained

    @torch.no_grad()
    def log_images(
        self,
        batch: Mapping[str, Any],
        N: int = 8,
        n_row: int = 4,
        return_keys: Sequence[str] | None = None,
        ddim_steps: int = 50,
        ddim_eta: float = 0.0,
        unconditional_guidance_scale: float = 5.0,
        unconditional_guidance_label: Any = "",
        use_ema_scope: bool = True,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Inputs, reconstructions, the text, and DDIM samples guided on the text (the unconditional branch keeps
        the image embedding)."""
        z, cond, x, xrec, xc = self.get_input(
            batch, self.first_stage_key, bs=N, return_first_stage_outputs=True, return_original_cond=True
        )
        log: dict[str, Any] = {"inputs": x, "reconstruction": xrec}
        log.update(conditioning_log(self, batch, cond["c_crossattn"][0], x, xc))
        label = [""] if unconditional_guidance_label in (None, "") else unconditional_guidance_label
        scope = self.ema_scope("Sampling") if use_ema_scope else nullcontext()
        log[f"samplescfg_scale_{unconditional_guidance_scale:.2f}"] = guided_samples(
            self, cond, x.shape[0], unconditional_guidance_scale, label, scope,
            ddim=True, ddim_steps=ddim_steps, eta=ddim_eta,
        )
        return select_keys(log, return_keys)
