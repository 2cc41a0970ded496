"""LPIPS, the learned perceptual distance of the autoencoder losses (VGG16 variant).

``d(x, y) = Σ_l mean_hw( w_l · (φ̂_l(x) − φ̂_l(y))² )`` where ``φ̂_l`` are the channel-normalised VGG16 features
relu1_2 … relu5_3 of the shifted/scaled input and ``w_l`` the 1x1 "lin" layers calibrated on human judgements.

The lin weights come from the ``lpips`` package (``lpips/weights/v0.1/vgg.pth``, the
``vgg_lpips`` weights). The VGG16 backbone weights are torchvision's ImageNet weights;
see :class:`LPIPS` for how they are supplied offline.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Union

import torch
from torch import nn

from ldm.checkpoint import load_torch_object

logger = logging.getLogger(__name__)

#: torchvision's ``VGG16_Weights.IMAGENET1K_V1``; ``torch.hub`` keeps it as ``<hub dir>/checkpoints/<file name>``.
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: VGG16 ``features`` layout: conv widths and "M" for max-pooling, up to relu5_3 (index 29).
_VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
#: ``features`` index ranges of the five slices, each ending at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
CHANNELS = (64, 128, 256, 512, 512)

Backbone = Union[str, os.PathLike, None]


class PerceptualWeightsError(RuntimeError):
    """The pretrained VGG16 backbone of LPIPS cannot be had; the message says how to supply it."""


def normalize_tensor(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """``x / (‖x‖₂ over channels + eps)`` for ``(B, C, H, W)``."""
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


def spatial_average(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    """Mean over H and W: ``(B, C, H, W) -> (B, C, 1, 1)``."""
    return x.mean([2, 3], keepdim=keepdim)


def lin_weights_path() -> Path:
    """The lin-layer weights shipped in the ``lpips`` package (found without importing it)."""
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        raise PerceptualWeightsError("the 'lpips' package is not installed; `pip install lpips` provides the "
                                     "LPIPS lin-layer weights (lpips/weights/v0.1/vgg.pth)")
    return Path(spec.submodule_search_locations[0]) / "weights" / "v0.1" / "vgg.pth"


def _how_to_supply() -> str:
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(VGG16_URL).name
    return (f"Supply them in one of these ways: put torchvision's file {VGG16_URL} at {cached} (the torch hub cache, "
            "see $TORCH_HOME); or set the loss parameter `perceptual_backbone: /path/to/vgg16.pth` (a torchvision "
            "VGG16 state dict) in lossconfig.params; or opt into an untrained backbone with "
            "`perceptual_backbone: random` (only sensible when a checkpoint with `loss.perceptual_loss.*` is loaded "
            "afterwards); or disable the perceptual term with `perceptual_weight: 0`.")


def pretrained_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet VGG16 state dict: from the torch hub cache if present, else downloaded into it."""
    try:
        return torch.hub.load_state_dict_from_url(VGG16_URL, map_location="cpu", progress=False, weights_only=True)
    except (OSError, RuntimeError) as err:
        raise PerceptualWeightsError(f"LPIPS needs ImageNet VGG16 weights and could not get them ({err}). "
                                     + _how_to_supply()) from err


def load_vgg16_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A VGG16 state dict from ``path`` (torchvision's full dict or just its ``features``)."""
    path = Path(path)
    if not path.is_file():
        raise PerceptualWeightsError(f"perceptual_backbone: no VGG16 weights file at {path}. " + _how_to_supply())
    return load_torch_object(path)


class VGG16Features(nn.Module):
    """VGG16 ``features`` cut into the five slices LPIPS reads; keys ``slice{k}.{features index}.*``.

    ``forward(x)``: ``(B, 3, H, W)`` -> five maps, relu1_2 ``(B, 64, H, W)`` … relu5_3 ``(B, 512, H/16, W/16)``.
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for spec in _VGG16_LAYOUT:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, spec, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                channels = spec
        for k, (start, end) in enumerate(_SLICES, start=1):
            self.add_module(f"slice{k}", nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(start, end))))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for k in range(1, len(_SLICES) + 1):
            x = getattr(self, f"slice{k}")(x)
            outs.append(x)
        return outs

    def load_torchvision_state_dict(self, state: dict[str, torch.Tensor], source: str) -> None:
        """Copy torchvision VGG16 weights (``features.N.*`` or bare ``N.*``; the classifier is ignored)."""
        features = {k.removeprefix("features."): v for k, v in state.items() if not k.startswith("classifier.")}
        mapped = {}
        for k, (start, end) in enumerate(_SLICES, start=1):
            for i in range(start, end):
                for name in ("weight", "bias"):
                    if f"{i}.{name}" in features:
                        mapped[f"slice{k}.{i}.{name}"] = features.pop(f"{i}.{name}")
        missing = sorted(set(self.state_dict()) - set(mapped))
        if missing or features:
            raise PerceptualWeightsError(
                f"{source} is not a VGG16 state dict (torchvision keys 'features.N.weight/bias' for N in 0..28): "
                f"missing {[k.split('.', 1)[1] for k in missing][:4]}, unexpected {sorted(features)[:4]}")
        self.load_state_dict(mapped)


class ScalingLayer(nn.Module):
    """``(x − shift) / scale`` per RGB channel, mapping [-1, 1] images to VGG's input statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class NetLinLayer(nn.Module):
    """Optional dropout then a bias-free 1x1 conv ``C -> 1``: keys ``model.1.weight`` with ``use_dropout``,
    ``model.0.weight`` without."""

    def __init__(self, chn_in: int, chn_out: int = 1, use_dropout: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout()] if use_dropout else []
        layers.append(nn.Conv2d(chn_in, chn_out, 1, stride=1, padding=0, bias=False))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance; ``forward(x, y)``: two ``(B, 3, H, W)`` images in [-1, 1] -> ``(B, 1, 1, 1)``.

    State-dict keys: ``scaling_layer.shift/scale``, ``net.slice{1..5}.<idx>.*``, ``lin{0..4}.model.1.weight``
    (``model.0`` with ``use_dropout=False``). Every
    parameter has ``requires_grad=False`` and the module stays in eval mode (``train()`` does not switch it), so
    the lin-layer dropout never fires.

    ``backbone`` says where the VGG16 weights come from:

    - ``"pretrained"`` (default): torchvision's ImageNet weights (``VGG16_Weights.IMAGENET1K_V1``), read from the
      torch hub cache (``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth``) or downloaded into it. If that
      fails, :class:`PerceptualWeightsError` explains how to supply them; there is no silent fallback.
    - a path: a local torchvision VGG16 state dict (``features.N.*`` keys; the classifier is ignored).
    - ``"random"``: an explicit untrained backbone, announced with a ``logging`` warning.
    - ``None``: load nothing (architecture only), for when LPIPS is never evaluated or a checkpoint that holds
      ``perceptual_loss.*`` is loaded next.

    Built on the meta device (``with torch.device("meta")``), nothing is loaded: keys and shapes only.
    """

    def __init__(self, use_dropout: bool = True, backbone: Backbone = "pretrained") -> None:
        super().__init__()
        self.scaling_layer = ScalingLayer()
        self.net = VGG16Features()
        for i, channels in enumerate(CHANNELS):
            self.add_module(f"lin{i}", NetLinLayer(channels, use_dropout=use_dropout))
        self.use_dropout = use_dropout
        if not self.scaling_layer.shift.is_meta:
            self._load(backbone)
        self.requires_grad_(False)
        self.eval()

    def _load(self, backbone: Backbone) -> None:
        lins = load_torch_object(lin_weights_path())
        if not self.use_dropout:  # the shipped file holds the with-dropout keys lin<i>.model.1.weight
            lins = {k.replace(".model.1.", ".model.0."): v for k, v in lins.items()}
        self.load_state_dict(lins, strict=False)
        if backbone is None:
            return
        if backbone == "random":
            logger.warning("LPIPS runs with a RANDOM, untrained VGG16 backbone (perceptual_backbone='random'): the "
                           "perceptual loss is meaningless unless trained weights are loaded from a checkpoint.")
            return
        if backbone == "pretrained":
            self.net.load_torchvision_state_dict(pretrained_vgg16_state_dict(), source=VGG16_URL)
        else:
            self.net.load_torchvision_state_dict(load_vgg16_state_dict(backbone), source=str(backbone))
        logger.info("LPIPS: VGG16 backbone loaded from %s", backbone)

    def load_from_pretrained(self, name: str = "vgg_lpips") -> None:
        """(Re)load the lin-layer weights ``vgg_lpips`` (the ``lpips`` package's ``v0.1/vgg.pth``, the same file)."""
        if name != "vgg_lpips":
            raise ValueError(f"LPIPS weights {name!r} are unknown; only 'vgg_lpips' exists.")
        self._load(None)

    @classmethod
    def from_pretrained(cls, name: str = "vgg_lpips", backbone: Backbone = "pretrained") -> LPIPS:
        """A new LPIPS with the ``name`` lin weights and the VGG16 ``backbone`` (see the class docstring)."""
        model = cls(backbone=backbone)
        model.load_from_pretrained(name)
        return model

    def train(self, mode: bool = True) -> LPIPS:
        """Stay in eval mode whatever ``mode`` is (the loss is a fixed metric)."""
        return super().train(False)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # two passes, not one on the concatenated batch: a target without grad then builds no backward graph
        feats0, feats1 = self.net(self.scaling_layer(input)), self.net(self.scaling_layer(target))
        val = 0.0
        for i, (f0, f1) in enumerate(zip(feats0, feats1)):
            diff = (normalize_tensor(f0) - normalize_tensor(f1)) ** 2
            val = val + spatial_average(getattr(self, f"lin{i}")(diff), keepdim=True)
        return val
