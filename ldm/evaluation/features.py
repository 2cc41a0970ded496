"""Feature extractors for the generator metrics: images in, named feature arrays out.

The contract (:class:`FeatureExtractor`): an ``nn.Module`` with a ``name`` and ``forward(images)`` taking uint8
images ``(B, 3, H, W)`` in [0, 255] and returning ``{"pool": (B, D) float, "logits": (B, K) float}``;
``"pool"`` feeds FID, KID and precision/recall, ``"logits"`` (optional) the Inception Score.

The standard one is Inception-v3 as ported from TensorFlow by torch-fidelity (``inception-v3-compat``): pool3
features (2048-d) and the unbiased logits over 1008 classes (the TF graph's softmax input without its bias), on
images resized to 299 px by TF1's bilinear resize. Its weights are the published file
``weights-inception-2015-12-05-6726825d.pth`` in torch hub's checkpoint folder (``$TORCH_HOME/hub/checkpoints``);
when it is absent and cannot be downloaded, building the extractor raises one line naming the file and the folder.
The file is checked against the SHA-256 prefix in its name before torch-fidelity unpickles it.

Any other extractor (a small network for tests or a toy data set) plugs in as ``"package.module:factory"``, a
zero-argument callable returning a :class:`FeatureExtractor`.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
from pathlib import Path

import torch
from torch import nn

logger = logging.getLogger(__name__)

POOL = "pool"
LOGITS = "logits"
INCEPTION = "inception-v3-compat"
INCEPTION_WEIGHTS_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_WEIGHTS_URL = f"https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/{INCEPTION_WEIGHTS_FILE}"
INCEPTION_SHA256_PREFIX = "6726825d"


class FeatureExtractor(nn.Module):
    """Base of the extractors: ``forward(images uint8 (B, 3, H, W)) -> {"pool": (B, D), "logits": (B, K)}``."""

    name: str = "feature-extractor"

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class InceptionWeightsError(FileNotFoundError):
    """The Inception-v3 weights file is missing, could not be downloaded, or is not the published file."""


def inception_weights_folder() -> Path:
    """torch hub's checkpoint folder, where torch-fidelity looks for (and downloads) the Inception weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def inception_weights(path: str | Path | None = None, download: bool = True) -> Path:
    """The verified Inception-v3 weights file: ``path`` if given, else the one in :func:`inception_weights_folder`
    (downloaded there first when ``download`` and missing). Raises :class:`InceptionWeightsError` (one line)."""
    folder = inception_weights_folder()
    target = Path(path) if path is not None else folder / INCEPTION_WEIGHTS_FILE
    if path is None and not target.is_file() and download:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(INCEPTION_WEIGHTS_URL, str(target), INCEPTION_SHA256_PREFIX, progress=True)
        except Exception as error:  # noqa: BLE001 - any failure to fetch ends in the same one-line instruction
            reason = " ".join(str(error).split()) or type(error).__name__
            raise InceptionWeightsError(
                f"Inception-v3 weights {INCEPTION_WEIGHTS_FILE} are missing and could not be downloaded ({reason}); "
                f"download {INCEPTION_WEIGHTS_URL} and put it in {folder}"
            ) from None
    if not target.is_file():
        raise InceptionWeightsError(f"Inception-v3 weights {target.name} not found in {target.parent}; download "
                                    f"{INCEPTION_WEIGHTS_URL} and put it in {folder} (named {INCEPTION_WEIGHTS_FILE})")
    if not _sha256(target).startswith(INCEPTION_SHA256_PREFIX):
        raise InceptionWeightsError(f"{target} is not the published Inception-v3 weights file (its SHA-256 does not "
                                    f"start with {INCEPTION_SHA256_PREFIX}); download {INCEPTION_WEIGHTS_URL} again")
    return target


class InceptionV3Features(FeatureExtractor):
    """torch-fidelity's TF-compatible Inception-v3: ``pool`` = pool3 ``(B, 2048)``, ``logits`` = unbiased logits
    ``(B, 1008)``, from uint8 images of any size (resized to 299 × 299 inside)."""

    name = INCEPTION

    def __init__(self, weights: str | Path | None = None, download: bool = True) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        path = inception_weights(weights, download)
        self.network = FeatureExtractorInceptionV3(INCEPTION, ["2048", "logits_unbiased"],
                                                   feature_extractor_weights_path=str(path))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pool, logits = self.network(images)
        return {POOL: pool.float(), LOGITS: logits.float()}


def import_factory(spec: str) -> nn.Module:
    """The module built by ``"package.module:factory"`` (a zero-argument callable)."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"feature extractor {spec!r} must be {INCEPTION!r} or 'package.module:factory'")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"cannot import feature extractor {spec!r} ({error}); check the module and name") from None
    extractor = factory()
    if not isinstance(extractor, nn.Module):
        raise ValueError(f"feature extractor factory {spec!r} returned {type(extractor).__name__}, not an nn.Module")
    return extractor


def load_feature_extractor(spec: str | None = None, inception_weights_path: str | Path | None = None) -> nn.Module:
    """The extractor named by ``spec``: None or ``"inception-v3-compat"`` for Inception-v3 (weights from
    ``inception_weights_path`` or torch hub's folder), else ``"package.module:factory"``; in eval mode."""
    if spec in (None, INCEPTION):
        extractor = InceptionV3Features(inception_weights_path)
    else:
        extractor = import_factory(spec)
    return extractor.eval().requires_grad_(False)


def extractor_name(extractor: nn.Module) -> str:
    """The extractor's ``name`` (its class name when it has none): stored with reference statistics."""
    return str(getattr(extractor, "name", type(extractor).__name__))
