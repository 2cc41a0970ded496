"""A ControlNet-style client of the package, written the way such projects use ``ldm`` (lllyasviel/ControlNet's
``cldm``): it imports the UNet's building blocks, subclasses ``UNetModel`` and ``LatentDiffusion``, rebuilds the UNet
forward from ``time_embed`` / ``input_blocks`` / ``middle_block`` / ``output_blocks`` / ``out``, and copies the
UNet encoder's weights into a trainable copy joined by zero convolutions.

Used by ``tests/test_controlnet_client.py``; the classes are named by ``target:`` in that test's config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import einops
import torch
from torch import nn

from ldm.models.diffusion.ddpm import LatentDiffusion
from ldm.modules.diffusionmodules.openaimodel import TimestepEmbedSequential, UNetModel
from ldm.modules.diffusionmodules.util import conv_nd, timestep_embedding, zero_module
from ldm.util import instantiate_from_config


class ControlledUnetModel(UNetModel):
    """The locked UNet: its own forward rebuilt from the public blocks, with ``control`` residuals added to the
    middle output and to every skip connection (``control`` is consumed from its end, like the skips)."""

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor | None = None, context: torch.Tensor | None = None,
                control: list[torch.Tensor] | None = None, only_mid_control: bool = False,
                **kwargs: Any) -> torch.Tensor:
        skips = []
        with torch.no_grad():
            emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
            h = x.type(self.dtype)
            for block in self.input_blocks:
                h = block(h, emb, context)
                skips.append(h)
            h = self.middle_block(h, emb, context)
        control = list(control) if control is not None else None
        if control is not None:
            h = h + control.pop()
        for block in self.output_blocks:
            skip = skips.pop()
            if control is not None and not only_mid_control:
                skip = skip + control.pop()
            h = block(torch.cat([h, skip], dim=1), emb, context)
        return self.out(h.type(x.dtype))


def _zero_conv(channels: int) -> TimestepEmbedSequential:
    return TimestepEmbedSequential(zero_module(conv_nd(2, channels, channels, 1, padding=0)))


class ControlNet(nn.Module):
    """The trainable copy: the UNet's encoder (same constructor, same keys) plus a hint encoder and one zero
    convolution per encoder output; returns the residuals ``[input block outputs..., middle output]``."""

    def __init__(self, unet_config: Mapping[str, Any], hint_channels: int, hint_downsample: int) -> None:
        super().__init__()
        encoder = UNetModel(**unet_config)
        self.model_channels = encoder.model_channels
        self.dtype = encoder.dtype
        self.time_embed = encoder.time_embed
        self.input_blocks = encoder.input_blocks
        self.middle_block = encoder.middle_block
        hint_layers: list[nn.Module] = [conv_nd(2, hint_channels, 16, 3, padding=1), nn.SiLU()]
        for _ in range(hint_downsample):
            hint_layers += [conv_nd(2, 16, 16, 3, padding=1, stride=2), nn.SiLU()]
        hint_layers.append(zero_module(conv_nd(2, 16, self.model_channels, 3, padding=1)))
        self.input_hint_block = TimestepEmbedSequential(*hint_layers)
        widths = self._encoder_widths(unet_config)
        self.zero_convs = nn.ModuleList(_zero_conv(width) for width in widths)
        self.middle_block_out = _zero_conv(widths[-1])  # the middle block keeps the deepest width

    def _encoder_widths(self, unet_config: Mapping[str, Any]) -> list[int]:
        """Output channels of each input block, read off a dry forward."""
        size = unet_config["image_size"]
        h = torch.zeros(1, unet_config["in_channels"], size, size)
        emb = self.time_embed(timestep_embedding(torch.zeros(1), self.model_channels))
        context = torch.zeros(1, 1, unet_config["context_dim"])
        widths = []
        with torch.no_grad():
            for block in self.input_blocks:
                h = block(h, emb, context)
                widths.append(h.shape[1])
        return widths

    def forward(self, x: torch.Tensor, hint: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                **kwargs: Any) -> list[torch.Tensor]:
        emb = self.time_embed(timestep_embedding(timesteps, self.model_channels, repeat_only=False))
        guided_hint = self.input_hint_block(hint, emb, context)
        outs = []
        h = x.type(self.dtype)
        for block, zero_conv in zip(self.input_blocks, self.zero_convs, strict=True):
            h = block(h, emb, context)
            if guided_hint is not None:
                h = h + guided_hint
                guided_hint = None
            outs.append(zero_conv(h, emb, context))
        h = self.middle_block(h, emb, context)
        outs.append(self.middle_block_out(h, emb, context))
        return outs


class ControlLDM(LatentDiffusion):
    """LatentDiffusion with a control model: ``get_input`` adds the hint as ``c_concat``, ``apply_model`` runs the
    control model and passes its residuals to the locked UNet, only the control model is optimised."""

    def __init__(self, control_stage_config: Mapping[str, Any], control_key: str, only_mid_control: bool,
                 *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control_model = instantiate_from_config(control_stage_config)
        self.control_key = control_key
        self.only_mid_control = only_mid_control
        self.control_scales = [1.0] * (len(self.control_model.zero_convs) + 1)

    @torch.no_grad()
    def get_input(self, batch: Mapping[str, Any], k: str, bs: int | None = None, *args: Any,
                  **kwargs: Any) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        x, c = super().get_input(batch, self.first_stage_key, *args, **kwargs)
        control = batch[self.control_key]
        if bs is not None:
            control = control[:bs]
        control = einops.rearrange(control.to(self.device), "b h w c -> b c h w").float()
        return x, dict(c_crossattn=[c], c_concat=[control])

    def apply_model(self, x_noisy: torch.Tensor, t: torch.Tensor, cond: Mapping[str, Sequence[torch.Tensor]],
                    *args: Any, **kwargs: Any) -> torch.Tensor:
        unet = self.model.diffusion_model
        context = torch.cat(cond["c_crossattn"], 1)
        control = self.control_model(x=x_noisy, hint=torch.cat(cond["c_concat"], 1), timesteps=t, context=context)
        control = [residual * scale for residual, scale in zip(control, self.control_scales, strict=True)]
        return unet(x=x_noisy, timesteps=t, context=context, control=control, only_mid_control=self.only_mid_control)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.control_model.parameters(), lr=self.learning_rate)


def add_control(state_dict: Mapping[str, torch.Tensor], control_ldm: ControlLDM) -> dict[str, torch.Tensor]:
    """ControlNet's ``tool_add_control``: every ``control_model.X`` key takes ``model.diffusion_model.X`` where the
    UNet has it; the keys only the control model has (hint block, zero convolutions) keep their initial values."""
    merged = {}
    for key, value in control_ldm.state_dict().items():
        source = "model.diffusion_model." + key[len("control_model."):] if key.startswith("control_model.") else key
        merged[key] = state_dict[source].clone() if source in state_dict else value.clone()
    return merged
