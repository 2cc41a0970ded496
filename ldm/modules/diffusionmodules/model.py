"""The convolutional autoencoder of the first stage: ``Encoder`` and ``Decoder`` with their building blocks.

Both are built from one ``ddconfig`` (the ``ddconfig`` block of the autoencoder configs). The encoder maps
an image ``(B, in_channels, H, W)`` to ``(B, z, H/f, W/f)`` with ``f = 2**(len(ch_mult) - 1)`` and
``z = 2·z_channels`` when ``double_z`` (mean and log-variance), the decoder maps ``(B, z_channels, h, w)``
back to ``(B, out_ch, h·f, w·f)``. Module and parameter names are those of the original checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from ldm.modules.attention import attention
from ldm.modules.diffusionmodules.upsample_conv import upsample_conv

logger = logging.getLogger(__name__)

ATTN_TYPES = ("vanilla", "linear", "none")

# --------------------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------------------


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish: ``x · σ(x)``, as the one fused ``silu`` kernel (within one ulp of the product, one pass, no
    temporary)."""
    return F.silu(x)


def Normalize(in_channels: int, num_groups: int = 32) -> nn.GroupNorm:
    """GroupNorm with 32 groups, ε = 1e-6 and a learned affine transform."""
    return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=1e-6, affine=True)


def norm_swish(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``swish(norm(x))``; without autograd the swish overwrites the normalised tensor (a fresh one: ``norm`` is a
    GroupNorm), one buffer less."""
    h = norm(x)
    return F.silu(h, inplace=not torch.is_grad_enabled())


BAND_BYTES = 16 * 2**20


def banded_conv(conv: nn.Module, x: torch.Tensor, band_bytes: int = BAND_BYTES) -> torch.Tensor:
    """``conv(x)`` for ``x (B, C, H, W)``; without autograd, for an input larger than ``band_bytes`` (default
    ``BAND_BYTES``), in bands of rows with their ``padding``-row halos, written into one output.

    A CPU conv copies its whole input and output into oneDNN's blocked layout; in bands those copies are one
    band's size instead of two more full-size tensors. Bit-equal to ``conv(x)`` (each output pixel is the same
    sum over the same inputs). CPU, contiguous input, plain stride-1 zero-padded odd-kernel ``nn.Conv2d`` only;
    anything else runs whole.
    """
    if (
        torch.is_grad_enabled()
        or x.device.type != "cpu"
        or x.numel() * x.element_size() <= band_bytes
        or not x.is_contiguous()
        or type(conv) is not nn.Conv2d
        or conv.stride != (1, 1)
        or conv.dilation != (1, 1)
        or conv.padding_mode != "zeros"
        or conv.padding != (conv.kernel_size[0] // 2, conv.kernel_size[1] // 2)
    ):
        return conv(x)
    height, halo = x.shape[2], conv.padding[0]
    rows = max(1, band_bytes * height // (x.numel() * x.element_size()))
    out = None
    for top in range(0, height, rows):
        bottom = min(top + rows, height)
        first, last = max(top - halo, 0), min(bottom + halo, height)
        band = x[:, :, first:last]
        if first > top - halo or last < bottom + halo:
            band = F.pad(band, (0, 0, first - (top - halo), bottom + halo - last))
        part = F.conv2d(band, conv.weight, conv.bias, padding=(0, conv.padding[1]), groups=conv.groups)
        if out is None:
            out = part.new_empty((x.shape[0], part.shape[1], height, part.shape[3]))
        out[:, :, top:bottom] = part
    return out


class Upsample(nn.Module):
    """Nearest-neighbour ×2 upsampling, then an optional 3×3 conv: ``(B, C, H, W) -> (B, C, 2H, 2W)``.

    Without autograd the two run fused (``upsample_conv``): 2.25× fewer FLOPs, no upsampled intermediate.
    """

    def __init__(self, in_channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv and not torch.is_grad_enabled() and isinstance(self.conv, nn.Conv2d):
            return upsample_conv(x, self.conv)
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """×2 downsampling: ``(B, C, H, W) -> (B, C, H/2, W/2)``.

    With a conv: zero-pad right and bottom by one pixel, then a 3×3 stride-2 conv without padding
    (the asymmetric padding torch's conv cannot express); without: 2×2 average pooling.
    """

    def __init__(self, in_channels: int, with_conv: bool) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class ResnetBlock(nn.Module):
    """``x + conv2(drop(swish(norm2(conv1(swish(norm1(x))) + temb_proj(swish(temb))))))``.

    The skip path is the identity when the channel count is kept, else a 3×3 conv (``conv_shortcut=True``)
    or a 1×1 conv (``nin_shortcut``). ``temb_channels=0`` builds no timestep projection (the autoencoder).
    """

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float,
        temb_channels: int = 512,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.use_conv_shortcut = conv_shortcut

        self.norm1 = Normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if temb_channels > 0:
            self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = Normalize(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None) -> torch.Tensor:
        """``x (B, in_channels, H, W)``, ``temb (B, temb_channels)`` or None -> ``(B, out_channels, H, W)``.

        Without autograd the swishes and the residual add write into the block's own fresh tensors and large
        convolutions run in bands (``banded_conv``).
        """
        h = banded_conv(self.conv1, norm_swish(self.norm1, x))
        if temb is not None:
            h = h + self.temb_proj(nonlinearity(temb))[:, :, None, None]
        h = banded_conv(self.conv2, self.dropout(norm_swish(self.norm2, h)))
        if self.in_channels != self.out_channels:
            x = banded_conv(self.conv_shortcut if self.use_conv_shortcut else self.nin_shortcut, x)
        return x + h if torch.is_grad_enabled() or h.dtype != x.dtype else h.add_(x)


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H·W`` positions, with a residual connection.

    ``x + proj_out(softmax(q kᵀ / √C) v)`` with ``q, k, v`` 1×1 convs of ``norm(x)``; computed with
    ``scaled_dot_product_attention`` (in float32 for float16 inputs), in chunks of at most ``slice_size`` query
    positions when that attribute is set (``ldm.modules.attention_slicing``).
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.norm = Normalize(in_channels)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1, stride=1, padding=0)
        self.slice_size: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        h = self.norm(x)
        q, k, v = (rearrange(layer(h), "b c h w -> b 1 (h w) c") for layer in (self.q, self.k, self.v))
        h = attention(q, k, v, slice_size=self.slice_size)
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height, w=width)
        return x + self.proj_out(h)


class LinAttnBlock(nn.Module):
    """Single-head linear attention (``attn_type="linear"``), as the original builds it.

    ``to_out(V · softmax_n(K)ᵀ · Q)`` with ``q, k, v = to_qkv(x)`` (1×1 conv without bias), the softmax of the
    keys taken over the ``H·W`` positions. Like the original it has neither a normalisation nor a residual.
    """

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.to_qkv = nn.Conv2d(in_channels, 3 * in_channels, kernel_size=1, bias=False)
        self.to_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[2:]
        q, k, v = rearrange(self.to_qkv(x), "b (qkv c) h w -> qkv b c (h w)", qkv=3)
        context = torch.einsum("bdn,ben->bde", k.softmax(dim=-1), v)
        out = torch.einsum("bde,bdn->ben", context, q)
        return self.to_out(rearrange(out, "b c (h w) -> b c h w", h=height, w=width))


def make_attn(in_channels: int, attn_type: str = "vanilla") -> nn.Module:
    """The attention layer named by ``attn_type``: ``"vanilla"`` (AttnBlock), ``"linear"`` or ``"none"``."""
    if attn_type not in ATTN_TYPES:
        raise ValueError(f"ddconfig attn_type={attn_type!r} is unknown; use one of {list(ATTN_TYPES)}.")
    logger.debug("making attention of type %r with %d in_channels", attn_type, in_channels)
    if attn_type == "vanilla":
        return AttnBlock(in_channels)
    if attn_type == "linear":
        return LinAttnBlock(in_channels)
    return nn.Identity()


# --------------------------------------------------------------------------------------------------------
# Encoder and decoder
# --------------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """``(B, in_channels, H, W) -> (B, 2·z_channels if double_z else z_channels, H/f, W/f)``, f = 2^(levels−1).

    Per level ``num_res_blocks`` ResnetBlocks (with attention at the resolutions in ``attn_resolutions``),
    then a Downsample except at the last level; a middle block ResNet–attention–ResNet; GroupNorm, swish and a
    3×3 conv out. Decoder-only ddconfig keys (``out_ch``, ``give_pre_end``, ``tanh_out``) are accepted and
    ignored so that one ddconfig builds both halves.
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int | None = None,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int,
        resolution: int,
        z_channels: int,
        double_z: bool = True,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignore_kwargs,
    ) -> None:
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.downsampling_factor = 2 ** (self.num_resolutions - 1)

        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)

        curr_res = resolution
        in_ch_mult = (1, *ch_mult)
        self.in_ch_mult = in_ch_mult
        self.down = nn.ModuleList()
        for i_level in range(self.num_resolutions):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_in = ch * in_ch_mult[i_level]
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=0,
                                         dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type=attn_type))
            down = nn.Module()
            down.block = block
            down.attn = attn
            if i_level != self.num_resolutions - 1:
                down.downsample = Downsample(block_in, resamp_with_conv)
                curr_res = curr_res // 2
            self.down.append(down)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=0, dropout=dropout)
        self.mid.attn_1 = make_attn(block_in, attn_type=attn_type)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=0, dropout=dropout)

        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(
            block_in, 2 * z_channels if double_z else z_channels, kernel_size=3, stride=1, padding=1
        )

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError unless ``x`` is ``(B, in_channels, H, W)`` with H and W divisible by the factor."""
        factor = self.downsampling_factor
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"the encoder expects images of shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}; "
                f"pass channels-first images with {self.in_channels} channels (ddconfig.in_channels)."
            )
        height, width = x.shape[2:]
        if height % factor or width % factor:
            raise ValueError(
                f"image of shape {tuple(x.shape)}: height {height} and width {width} must be divisible by the "
                f"encoder's downsampling factor {factor} (= 2**(len(ch_mult) - 1)); resize or crop the image "
                f"to a multiple of {factor}, e.g. {height - height % factor or factor}x"
                f"{width - width % factor or factor}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        h = self.conv_in(x)
        for i_level, down in enumerate(self.down):
            for i_block, block in enumerate(down.block):
                h = block(h, None)
                if len(down.attn) > 0:
                    h = down.attn[i_block](h)
            if i_level != self.num_resolutions - 1:
                h = down.downsample(h)

        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, None)), None)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """``(B, z_channels, h, w) -> (B, out_ch, h·f, w·f)``: the Encoder mirrored.

    conv in, the middle block, then per level (lowest resolution first) ``num_res_blocks + 1`` ResnetBlocks
    (attention at ``attn_resolutions``) and an Upsample except at the top level; GroupNorm, swish and a conv
    out (``give_pre_end`` returns the features before them, ``tanh_out`` squashes the output).
    """

    def __init__(
        self,
        *,
        ch: int,
        out_ch: int,
        ch_mult: Sequence[int] = (1, 2, 4, 8),
        num_res_blocks: int,
        attn_resolutions: Sequence[int],
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        in_channels: int | None,
        resolution: int,
        z_channels: int,
        give_pre_end: bool = False,
        tanh_out: bool = False,
        use_linear_attn: bool = False,
        attn_type: str = "vanilla",
        **ignorekwargs,
    ) -> None:
        super().__init__()
        if use_linear_attn:
            attn_type = "linear"
        self.ch = ch
        self.temb_ch = 0
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.resolution = resolution
        self.in_channels = in_channels
        self.give_pre_end = give_pre_end
        self.tanh_out = tanh_out

        block_in = ch * ch_mult[self.num_resolutions - 1]
        curr_res = resolution // 2 ** (self.num_resolutions - 1)
        self.z_shape = (1, z_channels, curr_res, curr_res)
        logger.info("Working with z of shape %s = %d dimensions.", self.z_shape, z_channels * curr_res * curr_res)

        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)

        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=0, dropout=dropout)
        self.mid.attn_1 = make_attn(block_in, attn_type=attn_type)
        self.mid.block_2 = ResnetBlock(in_channels=block_in, out_channels=block_in, temb_channels=0, dropout=dropout)

        self.up = nn.ModuleList()
        for i_level in reversed(range(self.num_resolutions)):
            block, attn = nn.ModuleList(), nn.ModuleList()
            block_out = ch * ch_mult[i_level]
            for _ in range(num_res_blocks + 1):
                block.append(ResnetBlock(in_channels=block_in, out_channels=block_out, temb_channels=0,
                                         dropout=dropout))
                block_in = block_out
                if curr_res in attn_resolutions:
                    attn.append(make_attn(block_in, attn_type=attn_type))
            up = nn.Module()
            up.block = block
            up.attn = attn
            if i_level != 0:
                up.upsample = Upsample(block_in, resamp_with_conv)
                curr_res = curr_res * 2
            self.up.insert(0, up)  # self.up[i] holds level i, so keys match the encoder's numbering

        self.norm_out = Normalize(block_in)
        self.conv_out = nn.Conv2d(block_in, out_ch, kernel_size=3, stride=1, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        self.last_z_shape = z.shape
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, None)), None)
        for i_level in reversed(range(self.num_resolutions)):
            up = self.up[i_level]
            for i_block, block in enumerate(up.block):
                h = block(h, None)
                if len(up.attn) > 0:
                    h = up.attn[i_block](h)
            if i_level != 0:
                h = up.upsample(h)

        if self.give_pre_end:
            return h
        h = banded_conv(self.conv_out, norm_swish(self.norm_out, h))
        return torch.tanh(h) if self.tanh_out else h


# --------------------------------------------------------------------------------------------------------
# The original module's other public names, defined in sibling modules that build on the blocks above
# --------------------------------------------------------------------------------------------------------

_ELSEWHERE = {
    "get_timestep_embedding": "ldm.modules.diffusionmodules.pixel_unet",
    "Model": "ldm.modules.diffusionmodules.pixel_unet",
    **dict.fromkeys(
        ("SimpleDecoder", "UpsampleDecoder", "LatentRescaler", "MergedRescaleEncoder", "MergedRescaleDecoder",
         "Upsampler", "Resize", "FirstStagePostProcessor"),
        "ldm.modules.diffusionmodules.rescalers",
    ),
}


def __getattr__(name: str) -> object:
    """Resolve ``model.Model``, ``model.LatentRescaler``, ... lazily (their modules import this one)."""
    if name in _ELSEWHERE:
        import importlib

        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
